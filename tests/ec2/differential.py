"""The same calls against moto's EC2 server and against sg-agent, their
answers compared in shape (every key path a response has) and in error
codes. A key moto gives that sg-agent does not fails the test unless it is
listed below with the reason (docs/ec2-api.md, "Where moto differs").

Usage: differential.py MOTO_ENDPOINT AGENT_ENDPOINT
"""

import sys

from botocore.exceptions import ClientError

from common import check, client, done

# Keys moto gives that sg-agent leaves out, and why.
NOT_GIVEN = {}

# Where moto answers otherwise than AWS documents (step: (moto, sg-agent)).
MOTO_DIFFERS = {
    # AWS's DeleteSecurityGroup: "If you attempt to delete a security group
    # that is associated with an instance or network interface, is
    # referenced by another security group in the same VPC ... the
    # operation fails with DependencyViolation." moto deletes it.
    "DeleteSecurityGroup (referenced)": ("ok", "DependencyViolation"),
    # AWS's DescribeNetworkAcls of an id that is not there:
    # InvalidNetworkAclID.NotFound ("The network ACL ID ... does not
    # exist"); moto answers with the route tables' code.
    "DescribeNetworkAcls (deleted)": ("InvalidRouteTableID.NotFound", "InvalidNetworkAclID.NotFound"),
}


def shape(value, prefix=""):
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "ResponseMetadata":
                continue
            out.add(prefix + k)
            out |= shape(v, prefix + k + ".")
    elif isinstance(value, list):
        for v in value:
            out |= shape(v, prefix + "[].")
    return out


def call(ec2, name, **kwargs):
    try:
        return "ok", getattr(ec2, name)(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], {}


def sequence(endpoint):
    ec2 = client(endpoint)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    steps = []
    code, r = call(ec2, "create_security_group", GroupName="diff-a", Description="differential", VpcId=vpc,
                   TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "Name", "Value": "a"}]}])
    steps.append(("CreateSecurityGroup", code, r))
    a = r["GroupId"]
    code, r = call(ec2, "create_security_group", GroupName="diff-b", Description="differential", VpcId=vpc)
    b = r["GroupId"]
    steps.append(("CreateSecurityGroup (again)", *call(ec2, "create_security_group", GroupName="diff-a",
                                                         Description="x", VpcId=vpc)))
    perms = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
              "IpRanges": [{"CidrIp": "10.1.0.0/16", "Description": "v4"}],
              "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32", "Description": "v6"}],
              "UserIdGroupPairs": [{"GroupId": b, "Description": "peer"}]}]
    steps.append(("AuthorizeSecurityGroupIngress", *call(ec2, "authorize_security_group_ingress", GroupId=a,
                                                           IpPermissions=perms)))
    steps.append(("AuthorizeSecurityGroupIngress (duplicate)",
                  *call(ec2, "authorize_security_group_ingress", GroupId=a, IpPermissions=perms)))
    steps.append(("DescribeSecurityGroups", *call(ec2, "describe_security_groups", GroupIds=[a])))
    steps.append(("DescribeSecurityGroupRules",
                  *call(ec2, "describe_security_group_rules", Filters=[{"Name": "group-id", "Values": [a]}])))
    steps.append(("RevokeSecurityGroupEgress", *call(ec2, "revoke_security_group_egress", GroupId=a, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])))
    steps.append(("RevokeSecurityGroupEgress (again)", *call(ec2, "revoke_security_group_egress", GroupId=a,
                                                               IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])))
    # A group only a rule references: AWS refuses to delete it.
    c = ec2.create_security_group(GroupName="diff-c", Description="differential", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_egress(GroupId=a, IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "UserIdGroupPairs": [{"GroupId": c}]}])
    steps.append(("DeleteSecurityGroup (referenced)", *call(ec2, "delete_security_group", GroupId=c)))
    call(ec2, "revoke_security_group_egress", GroupId=a, IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "UserIdGroupPairs": [{"GroupId": c}]}])
    call(ec2, "delete_security_group", GroupId=c)
    steps.append(("RevokeSecurityGroupIngress", *call(ec2, "revoke_security_group_ingress", GroupId=a,
                                                        IpPermissions=perms)))
    steps.append(("DeleteSecurityGroup", *call(ec2, "delete_security_group", GroupId=a)))
    steps.append(("DescribeSecurityGroups (deleted)", *call(ec2, "describe_security_groups", GroupIds=[a])))
    call(ec2, "delete_security_group", GroupId=b)
    steps.append(("DescribeVpcs", *call(ec2, "describe_vpcs", VpcIds=[vpc])))
    steps.append(("DescribeSubnets", *call(ec2, "describe_subnets", Filters=[{"Name": "vpc-id", "Values": [vpc]}])))
    # Network ACLs, as Terraform's aws_network_acl drives them.
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][0]["SubnetId"]
    steps.append(("DescribeNetworkAcls (default)", *call(ec2, "describe_network_acls", Filters=[
        {"Name": "default", "Values": ["true"]}, {"Name": "vpc-id", "Values": [vpc]}])))
    code, r = call(ec2, "create_network_acl", VpcId=vpc, TagSpecifications=[
        {"ResourceType": "network-acl", "Tags": [{"Key": "Name", "Value": "diff"}]}])
    steps.append(("CreateNetworkAcl", code, r))
    acl = r["NetworkAcl"]["NetworkAclId"]
    entry = dict(NetworkAclId=acl, RuleNumber=100, Egress=False, RuleAction="allow", Protocol="6",
                 CidrBlock="0.0.0.0/0", PortRange={"From": 80, "To": 80})
    steps.append(("CreateNetworkAclEntry", *call(ec2, "create_network_acl_entry", **entry)))
    steps.append(("CreateNetworkAclEntry (duplicate)", *call(ec2, "create_network_acl_entry", **entry)))
    steps.append(("ReplaceNetworkAclEntry", *call(ec2, "replace_network_acl_entry", **{**entry, "RuleAction": "deny"})))
    current = ec2.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])["NetworkAcls"][0]
    old = [a for a in current["Associations"] if a["SubnetId"] == subnet][0]["NetworkAclAssociationId"]
    code, r = call(ec2, "replace_network_acl_association", AssociationId=old, NetworkAclId=acl)
    steps.append(("ReplaceNetworkAclAssociation", code, r))
    steps.append(("DescribeNetworkAcls", *call(ec2, "describe_network_acls", NetworkAclIds=[acl])))
    steps.append(("DeleteNetworkAcl (associated)", *call(ec2, "delete_network_acl", NetworkAclId=acl)))
    call(ec2, "replace_network_acl_association", AssociationId=r.get("NewAssociationId", ""),
         NetworkAclId=current["NetworkAclId"])
    steps.append(("DeleteNetworkAclEntry", *call(ec2, "delete_network_acl_entry", NetworkAclId=acl, RuleNumber=100,
                                                  Egress=False)))
    steps.append(("DeleteNetworkAcl", *call(ec2, "delete_network_acl", NetworkAclId=acl)))
    steps.append(("DescribeNetworkAcls (deleted)", *call(ec2, "describe_network_acls", NetworkAclIds=[acl])))
    # Managed prefix lists, each entry with its description (Terraform's
    # aws_ec2_managed_prefix_list reads them back).
    code, r = call(ec2, "create_managed_prefix_list", PrefixListName="diff-pl", MaxEntries=5, AddressFamily="IPv4",
                   Entries=[{"Cidr": "198.51.100.0/24", "Description": "partner"}, {"Cidr": "203.0.113.0/28"}])
    steps.append(("CreateManagedPrefixList", code, r))
    pl = r["PrefixList"]["PrefixListId"]
    steps.append(("GetManagedPrefixListEntries", *call(ec2, "get_managed_prefix_list_entries", PrefixListId=pl)))
    steps.append(("ModifyManagedPrefixList", *call(ec2, "modify_managed_prefix_list", PrefixListId=pl,
                                                     CurrentVersion=1,
                                                     AddEntries=[{"Cidr": "100.64.0.0/28", "Description": "lab"}],
                                                     RemoveEntries=[{"Cidr": "203.0.113.0/28"}])))
    steps.append(("DescribeManagedPrefixLists", *call(ec2, "describe_managed_prefix_lists", PrefixListIds=[pl])))
    steps.append(("DeleteManagedPrefixList", *call(ec2, "delete_managed_prefix_list", PrefixListId=pl)))
    return steps


moto, agent = sequence(sys.argv[1]), sequence(sys.argv[2])
differences = []
for (name, mcode, mresp), (_, acode, aresp) in zip(moto, agent):
    if mcode != acode:
        if MOTO_DIFFERS.get(name) == (mcode, acode):
            print(f"  {name}: moto answers {mcode}, sg-agent {acode}, as AWS documents")
            continue
        differences.append(f"{name}: moto answers {mcode}, sg-agent {acode}")
        continue
    missing = {k for k in shape(mresp) - shape(aresp) if k.split(".")[-1] not in NOT_GIVEN}
    extra = shape(aresp) - shape(mresp)
    for k in sorted(missing):
        differences.append(f"{name}: moto gives {k}, sg-agent does not")
    for k in sorted(extra):
        print(f"  {name}: sg-agent gives {k}, moto does not")
for d in differences:
    print("DIFF", d)
check(not differences, f"{len(differences)} differences from moto not explained")
check(len(moto) == len(agent) == 30, "every step ran on both")
done("differential")
