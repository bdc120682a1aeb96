"""Terraform's AWS provider's call sequences for security groups, replayed
with boto3 (Terraform itself cannot be installed on these machines), as
its source makes them (internal/service/ec2: vpc_security_group.go,
vpc_security_group_ingress_rule.go): after each, a read gives back exactly
what the configuration says, so a plan after the apply would be empty.

Usage: terraform_replay.py ENDPOINT
"""

import sys
import time

from botocore.exceptions import ClientError

from common import check, client, done, fails

ec2 = client(sys.argv[1])
sts = client(sys.argv[1], "sts")

# Provider start: the caller's identity.
sts.get_caller_identity()
vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]


def permissions(config):
    """The configuration's ingress/egress blocks as IpPermissions."""
    out = []
    for b in config:
        p = {"IpProtocol": b["protocol"], "FromPort": b["from_port"], "ToPort": b["to_port"]}
        if b.get("cidr_blocks"):
            p["IpRanges"] = [{"CidrIp": c} for c in b["cidr_blocks"]]
        if b.get("ipv6_cidr_blocks"):
            p["Ipv6Ranges"] = [{"CidrIpv6": c} for c in b["ipv6_cidr_blocks"]]
        if b.get("security_groups"):
            p["UserIdGroupPairs"] = [{"GroupId": g} for g in b["security_groups"]]
        out.append(p)
    return out


def read_back(perms):
    """What the provider's read turns IpPermissions into: one block per
    protocol, ports and source kind, as a comparable set."""
    out = set()
    for p in perms:
        proto = p["IpProtocol"]
        ports = (p.get("FromPort", 0), p.get("ToPort", 0))
        for r in p.get("IpRanges", []):
            out.add((proto, ports, "cidr", r["CidrIp"]))
        for r in p.get("Ipv6Ranges", []):
            out.add((proto, ports, "ipv6", r["CidrIpv6"]))
        for r in p.get("UserIdGroupPairs", []):
            out.add((proto, ports, "sg", r["GroupId"]))
    return out


def expected(config):
    return read_back(permissions(config))


def apply_create(name, ingress, egress, tags):
    # resourceSecurityGroupCreate
    gid = ec2.create_security_group(
        GroupName=name, Description="Managed by Terraform", VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["GroupId"]
    # waitSecurityGroupCreated: describe until found
    for _ in range(20):
        try:
            ec2.describe_security_groups(GroupIds=[gid])
            break
        except ClientError as e:
            if e.response["Error"]["Code"] != "InvalidGroup.NotFound":
                raise
            time.sleep(0.1)
    # AWS defaults all Security Groups to have an ALLOW ALL egress rule:
    # the provider revokes it, IPv4 and then IPv6.
    ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
        {"FromPort": 0, "ToPort": 0, "IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    try:
        ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
            {"FromPort": 0, "ToPort": 0, "IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
    except ClientError as e:
        # "a non-IPv6 enabled SG": the provider ignores these two.
        check(e.response["Error"]["Code"] in ("InvalidPermission.NotFound", "InvalidParameterValue"),
              f"revoking the IPv6 default egress of a group without one: {e}")
    if ingress:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=permissions(ingress))
    if egress:
        ec2.authorize_security_group_egress(GroupId=gid, IpPermissions=permissions(egress))
    return gid


def plan_is_empty(gid, ingress, egress, tags, what):
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    check(read_back(g["IpPermissions"]) == expected(ingress), f"{what}: ingress read back as configured")
    check(read_back(g["IpPermissionsEgress"]) == expected(egress), f"{what}: egress read back as configured")
    check({t["Key"]: t["Value"] for t in g.get("Tags", [])} == tags, f"{what}: tags read back")
    check(g["VpcId"] == vpc_id and g["Description"] == "Managed by Terraform" and g["OwnerId"], f"{what}: attributes")


# aws_security_group "web": create.
elb = ec2.describe_security_groups(GroupNames=["instagram-elb-security-group"])["SecurityGroups"][0]["GroupId"]
ingress = [
    {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]},
    {"protocol": "tcp", "from_port": 8080, "to_port": 8080, "security_groups": [elb]},
]
egress = [{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["10.0.0.0/16"]}]
tags = {"Name": "tf-web", "env": "lab"}
gid = apply_create("tf-web", ingress, egress, tags)
plan_is_empty(gid, ingress, egress, tags, "create")

# update: one rule added, one removed (the provider's diff: revoke the
# removed permissions, authorize the added ones).
removed = ingress[1]
added = {"protocol": "udp", "from_port": 53, "to_port": 53, "cidr_blocks": ["10.0.0.0/16"]}
ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=permissions([removed]))
ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=permissions([added]))
ingress = [ingress[0], added]
plan_is_empty(gid, ingress, egress, tags, "update")

# import: the read alone gives the whole resource.
imported = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
check(imported["GroupName"] == "tf-web" and read_back(imported["IpPermissions"]) == expected(ingress), "import")

# aws_vpc_security_group_ingress_rule: authorize one, read it by id, tag
# it by id, change it, revoke it by id.
out = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.0/28", "Description": "ops"}]}])
rule_id = out["SecurityGroupRules"][0]["SecurityGroupRuleId"]
ec2.create_tags(Resources=[rule_id], Tags=[{"Key": "Name", "Value": "ssh-ops"}])
rule = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rule_id])["SecurityGroupRules"][0]
check(rule["GroupId"] == gid and rule["CidrIpv4"] == "203.0.113.0/28" and rule["IpProtocol"] == "tcp"
      and rule["FromPort"] == 22 and rule["ToPort"] == 22 and rule["IsEgress"] is False
      and rule["Description"] == "ops" and rule["Tags"] == [{"Key": "Name", "Value": "ssh-ops"}],
      "aws_vpc_security_group_ingress_rule: read by id")
ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[{
    "SecurityGroupRuleId": rule_id,
    "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIpv4": "203.0.113.0/28",
                          "Description": "ops team"}}])
rule = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rule_id])["SecurityGroupRules"][0]
check(rule["Description"] == "ops team" and rule["Tags"] == [{"Key": "Name", "Value": "ssh-ops"}],
      "aws_vpc_security_group_ingress_rule: update in place keeps the id and tags")
ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[rule_id])
fails("InvalidSecurityGroupRuleId.NotFound", "aws_vpc_security_group_ingress_rule: read after destroy",
      ec2.describe_security_group_rules, SecurityGroupRuleIds=[rule_id])

# destroy while an instance uses the group: the provider retries on
# DependencyViolation until the instance lets go.
app = ec2.describe_instances(Filters=[{"Name": "private-ip-address", "Values": ["10.0.1.10"]}])
app = app["Reservations"][0]["Instances"][0]
server = [g["GroupId"] for g in app["SecurityGroups"]]
ec2.modify_instance_attribute(InstanceId=app["InstanceId"], Groups=server + [gid])
enis = ec2.describe_network_interfaces(Filters=[{"Name": "group-id", "Values": [gid]}])["NetworkInterfaces"]
check(len(enis) == 1, "destroy: the provider finds the interface using the group")
fails("DependencyViolation", "destroy while in use", ec2.delete_security_group, GroupId=gid)
ec2.modify_instance_attribute(InstanceId=app["InstanceId"], Groups=server)
ec2.delete_security_group(GroupId=gid)
fails("InvalidGroup.NotFound", "destroy: gone", ec2.describe_security_groups, GroupIds=[gid])

done("terraform_replay")
