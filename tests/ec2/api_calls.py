"""Every call of the EC2 API sg-agent answers, and its errors, through
boto3 and the AWS CLI, against `run --ec2-api` on the seed architecture.

Usage: api_calls.py ENDPOINT AWS_CLI
"""

import json
import subprocess
import sys
import urllib.request

from common import check, client, done, fails

endpoint, aws = sys.argv[1], sys.argv[2]
ec2 = client(endpoint)

# STS, as Terraform's provider asks first.
ident = client(endpoint, "sts").get_caller_identity()
check(ident["Account"] == "000000000000", "STS GetCallerIdentity answers the account")

# The file's groups, each with its AWS shape.
groups = {g["GroupName"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
elb = groups["instagram-elb-security-group"]
check(elb["GroupId"].startswith("sg-") and len(elb["GroupId"]) == 20, "groups have sg- ids")
check(elb["OwnerId"] == "000000000000" and elb["VpcId"].startswith("vpc-"), "OwnerId and VpcId")
perm = [p for p in elb["IpPermissions"] if p["IpProtocol"] == "tcp" and p["FromPort"] == 80]
check(len(perm) == 1, "one IpPermission per protocol and ports")
check(perm[0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0", "Description": "HTTP from the internet"}], "IpRanges with the description")
check(perm[0]["Ipv6Ranges"] == [{"CidrIpv6": "::/0", "Description": "HTTP from the internet"}], "Ipv6Ranges apart")
egress = elb["IpPermissionsEgress"]
check(egress and egress[0]["IpProtocol"] == "-1" and "FromPort" not in egress[0], "protocol -1 without ports")
server = groups["instagram-server-security-group"]
pairs = [pair for p in server["IpPermissions"] for pair in p["UserIdGroupPairs"]]
check({p["GroupId"] for p in pairs} == {groups["instagram-bastion-host-security-group"]["GroupId"], elb["GroupId"]},
      "group references by GroupId")
bastion = groups["instagram-bastion-host-security-group"]
pls = [pl["PrefixListId"] for p in bastion["IpPermissions"] for pl in p["PrefixListIds"]]
check(len(pls) == 2 and all(p.startswith("pl-") for p in pls), "prefix-list references by pl- id")

by_id = ec2.describe_security_groups(GroupIds=[elb["GroupId"]])["SecurityGroups"]
check([g["GroupName"] for g in by_id] == ["instagram-elb-security-group"], "DescribeSecurityGroups by GroupIds")
by_filter = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["instagram-*-security-group"]}])
check(len(by_filter["SecurityGroups"]) == 4, "group-name filter with a wildcard")
fails("InvalidGroup.NotFound", "an unknown group id", ec2.describe_security_groups, GroupIds=["sg-0123456789abcdef0"])
fails("InvalidParameterValue", "an unknown filter", ec2.describe_security_groups, Filters=[{"Name": "colour", "Values": ["x"]}])

# CreateSecurityGroup: AWS's default egress rule is there.
vpc_id = elb["VpcId"]
created = ec2.create_security_group(
    GroupName="api-web", Description="made through the API", VpcId=vpc_id,
    TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "Name", "Value": "api-web"}]}])
gid = created["GroupId"]
check(gid.startswith("sg-"), "CreateSecurityGroup returns the GroupId")
g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
check(g["IpPermissions"] == [], "a new group lets nothing in")
check([(p["IpProtocol"], [r["CidrIp"] for r in p["IpRanges"]], [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])])
       for p in g["IpPermissionsEgress"]] == [("-1", ["0.0.0.0/0"], ["::/0"])],
      "a new group has AWS's default egress rules (IPv4, and IPv6: the VPC has an IPv6 range)")
check(g["Tags"] == [{"Key": "Name", "Value": "api-web"}], "TagSpecifications kept")
fails("InvalidGroup.Duplicate", "a second group of the same name", ec2.create_security_group,
      GroupName="API-WEB", Description="x", VpcId=vpc_id)
fails("InvalidParameterValue", "a group named sg-*", ec2.create_security_group, GroupName="sg-web", Description="x")
fails("InvalidVpcID.NotFound", "an unknown VPC", ec2.create_security_group, GroupName="x", Description="x",
      VpcId="vpc-0123456789abcdef0")

# Authorize: one rule per source, IPv4 and IPv6 apart, each with its id.
r = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
     "IpRanges": [{"CidrIp": "198.51.100.0/24", "Description": "partners"}, {"CidrIp": "203.0.113.0/24"}],
     "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32"}],
     "UserIdGroupPairs": [{"GroupId": elb["GroupId"]}]}])
rules = r["SecurityGroupRules"]
check(len(rules) == 4 and len({x["SecurityGroupRuleId"] for x in rules}) == 4, "one rule per source, each its own id")
check(all(x["SecurityGroupRuleId"].startswith("sgr-") and x["GroupId"] == gid and not x["IsEgress"] for x in rules),
      "GroupId and IsEgress in every rule")
check(sum("CidrIpv4" in x for x in rules) == 2 and sum("CidrIpv6" in x for x in rules) == 1, "IPv4 and IPv6 never merged")
check(sum(x.get("ReferencedGroupInfo", {}).get("GroupId") == elb["GroupId"] for x in rules) == 1, "ReferencedGroupInfo")
fails("InvalidPermission.Duplicate", "the same rule again", ec2.authorize_security_group_ingress, GroupId=gid,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}])
fails("InvalidPermission.Duplicate", "a new rule beside an existing one: all or nothing",
      ec2.authorize_security_group_ingress, GroupId=gid,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                      "IpRanges": [{"CidrIp": "192.0.2.128/25"}, {"CidrIp": "203.0.113.0/24"}]}])
now = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
check(len(now) == 6, "DescribeSecurityGroupRules by group-id: 4 ingress and the default egress (IPv4, IPv6)")
check(not any(x.get("CidrIpv4") == "192.0.2.128/25" for x in now), "a refused call changed nothing")
fails("InvalidParameterValue", "a malformed CIDR", ec2.authorize_security_group_ingress, GroupId=gid,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "IpRanges": [{"CidrIp": "10.0.0.1/8"}]}])
fails("InvalidParameterValue", "from port above to port", ec2.authorize_security_group_ingress, GroupId=gid,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": 9, "ToPort": 1, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
fails("InvalidGroup.NotFound", "a reference to no group", ec2.authorize_security_group_ingress, GroupId=gid,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "UserIdGroupPairs": [{"GroupId": "sg-0000000000000000a"}]}])

# By rule id: describe, modify (the id stays), describe anew, tag, revoke.
partners = next(x for x in rules if x.get("CidrIpv4") == "198.51.100.0/24")
one = ec2.describe_security_group_rules(SecurityGroupRuleIds=[partners["SecurityGroupRuleId"]])["SecurityGroupRules"]
check(len(one) == 1 and one[0]["Description"] == "partners" and one[0]["FromPort"] == 443, "a rule by its id")
ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[{
    "SecurityGroupRuleId": partners["SecurityGroupRuleId"],
    "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "CidrIpv4": "198.51.100.0/24",
                          "Description": "partners, TLS"}}])
one = ec2.describe_security_group_rules(SecurityGroupRuleIds=[partners["SecurityGroupRuleId"]])["SecurityGroupRules"][0]
check(one["FromPort"] == 8443 and one["Description"] == "partners, TLS", "ModifySecurityGroupRules keeps the id")
ec2.update_security_group_rule_descriptions_ingress(GroupId=gid, SecurityGroupRuleDescriptions=[
    {"SecurityGroupRuleId": partners["SecurityGroupRuleId"], "Description": "partners (renewed)"}])
one = ec2.describe_security_group_rules(SecurityGroupRuleIds=[partners["SecurityGroupRuleId"]])["SecurityGroupRules"][0]
check(one["Description"] == "partners (renewed)", "UpdateSecurityGroupRuleDescriptionsIngress by id")
ec2.update_security_group_rule_descriptions_ingress(GroupId=gid, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "203.0.113.0/24", "Description": "docs"}]}])
docs = [x for x in ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
        if x.get("CidrIpv4") == "203.0.113.0/24"]
check(docs[0]["Description"] == "docs", "UpdateSecurityGroupRuleDescriptionsIngress by permission")
ec2.create_tags(Resources=[partners["SecurityGroupRuleId"], gid], Tags=[{"Key": "team", "Value": "edge"}])
one = ec2.describe_security_group_rules(SecurityGroupRuleIds=[partners["SecurityGroupRuleId"]])["SecurityGroupRules"][0]
check(one["Tags"] == [{"Key": "team", "Value": "edge"}], "CreateTags on a rule")
tags = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["team"]}])["Tags"]
check(sorted((t["ResourceId"], t["ResourceType"]) for t in tags) ==
      sorted([(partners["SecurityGroupRuleId"], "security-group-rule"), (gid, "security-group")]), "DescribeTags")
ec2.delete_tags(Resources=[gid], Tags=[{"Key": "team"}])
check(ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["Tags"] == [{"Key": "Name", "Value": "api-web"}],
      "DeleteTags by key")
fails("InvalidGroup.NotFound", "tags on no group", ec2.create_tags, Resources=["sg-0123456789abcdef0"],
      Tags=[{"Key": "a", "Value": "b"}])

revoked = ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[partners["SecurityGroupRuleId"]])
check(revoked["Return"], "RevokeSecurityGroupIngress by rule id")
fails("InvalidSecurityGroupRuleId.NotFound", "revoking a rule id again", ec2.revoke_security_group_ingress,
      GroupId=gid, SecurityGroupRuleIds=[partners["SecurityGroupRuleId"]])
fails("InvalidPermission.NotFound", "revoking a rule that does not exist", ec2.revoke_security_group_ingress,
      GroupId=gid, IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.9.0.0/16"}]}])
ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32"}]}])
left = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
check(len(left) == 4, "revoked by permission: 2 ingress and the egress (IPv4, IPv6) left")

# Quotas: the file's [limits] (60 rules per group by default).
fails("RulesPerSecurityGroupLimitExceeded", "61 rules in a group", ec2.authorize_security_group_ingress, GroupId=gid,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": f"10.{i}.0.0/16"} for i in range(60)]}])

# Instances and interfaces: the file's, with their groups.
reservations = ec2.describe_instances()["Reservations"]
instances = {next(t["Value"] for t in i.get("Tags", [])) if i.get("Tags") else i["PrivateIpAddress"]: i
             for r in reservations for i in r["Instances"]}
app = instances["10.0.1.10"]
check(app["InstanceId"].startswith("i-") and app["State"]["Name"] == "running", "DescribeInstances")
check([s["GroupId"] for s in app["SecurityGroups"]] == [server["GroupId"]], "an instance's groups")
by_group = ec2.describe_instances(Filters=[{"Name": "instance.group-id", "Values": [server["GroupId"]]}])
check([i["InstanceId"] for r in by_group["Reservations"] for i in r["Instances"]] == [app["InstanceId"]],
      "DescribeInstances by instance.group-id")
enis = ec2.describe_network_interfaces(Filters=[{"Name": "group-id", "Values": [server["GroupId"]]}])["NetworkInterfaces"]
check(len(enis) == 1 and enis[0]["Attachment"]["InstanceId"] == app["InstanceId"], "DescribeNetworkInterfaces by group-id")
sixth = ec2.create_security_group(GroupName="api-sixth", Description="one too many", VpcId=vpc_id)["GroupId"]
fails("SecurityGroupsPerInstanceLimitExceeded", "six groups on an instance", ec2.modify_instance_attribute,
      InstanceId=app["InstanceId"], Groups=[g["GroupId"] for g in groups.values()] + [gid, sixth])
ec2.delete_security_group(GroupId=sixth)
ec2.modify_instance_attribute(InstanceId=app["InstanceId"], Groups=[server["GroupId"], gid])
app = ec2.describe_instances(InstanceIds=[app["InstanceId"]])["Reservations"][0]["Instances"][0]
check([s["GroupId"] for s in app["SecurityGroups"]] == [server["GroupId"], gid], "ModifyInstanceAttribute Groups")
ec2.modify_network_interface_attribute(NetworkInterfaceId=enis[0]["NetworkInterfaceId"], Groups=[server["GroupId"]])
app = ec2.describe_instances(InstanceIds=[app["InstanceId"]])["Reservations"][0]["Instances"][0]
check([s["GroupId"] for s in app["SecurityGroups"]] == [server["GroupId"]], "ModifyNetworkInterfaceAttribute Groups")
fails("InvalidInstanceID.NotFound", "an unknown instance", ec2.describe_instances, InstanceIds=["i-0123456789abcdef0"])
fails("UnsupportedOperation", "RunInstances", ec2.run_instances, ImageId="ami-12345678", MinCount=1, MaxCount=1)

# DeleteSecurityGroup: not while used.
fails("DependencyViolation", "a group an instance uses", ec2.delete_security_group, GroupId=server["GroupId"])
peer = ec2.create_security_group(GroupName="api-peer", Description="referenced only", VpcId=vpc_id)["GroupId"]
ec2.authorize_security_group_egress(GroupId=gid, IpPermissions=[
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "UserIdGroupPairs": [{"GroupId": peer}]}])
fails("DependencyViolation", "a group another group's rule references", ec2.delete_security_group, GroupId=peer)
ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "UserIdGroupPairs": [{"GroupId": peer}]}])
ec2.delete_security_group(GroupId=peer)
ec2.delete_security_group(GroupId=gid)
fails("InvalidGroup.NotFound", "a deleted group", ec2.describe_security_groups, GroupIds=[gid])

# Stale groups and references across VPCs: the seed has one VPC, so none.
stale = ec2.describe_stale_security_groups(VpcId=vpc_id)
check(stale["StaleSecurityGroupSet"] == [], "DescribeStaleSecurityGroups: none in one VPC")
refs = ec2.describe_security_group_references(GroupId=[elb["GroupId"]])
check(refs["SecurityGroupReferenceSet"] == [], "DescribeSecurityGroupReferences: no other VPC references it")

# The VPC, its subnets, the prefix lists.
vpcs = ec2.describe_vpcs()["Vpcs"]
check([v["CidrBlock"] for v in vpcs] == ["10.0.0.0/16"] and vpcs[0]["VpcId"] == vpc_id and vpcs[0]["IsDefault"], "DescribeVpcs")
subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
check([s["CidrBlock"] for s in subnets] == ["10.0.0.0/16"], "DescribeSubnets")
lists = {p["PrefixListName"]: p for p in ec2.describe_managed_prefix_lists()["PrefixLists"]}
check(lists["admins"]["AddressFamily"] == "IPv4" and lists["admins-v6"]["AddressFamily"] == "IPv6", "DescribeManagedPrefixLists")
entries = ec2.get_managed_prefix_list_entries(PrefixListId=lists["admins"]["PrefixListId"])["Entries"]
check(entries == [{"Cidr": "203.0.113.0/28"}], "GetManagedPrefixListEntries")

# Managed prefix lists: created, referenced, changed with versions, deleted.
pl = ec2.create_managed_prefix_list(
    PrefixListName="partners", MaxEntries=5, AddressFamily="IPv4",
    Entries=[{"Cidr": "198.51.100.0/24", "Description": "partner A"}, {"Cidr": "192.0.2.0/28"}],
    TagSpecifications=[{"ResourceType": "prefix-list", "Tags": [{"Key": "team", "Value": "edge"}]}])["PrefixList"]
check(pl["PrefixListId"].startswith("pl-") and pl["Version"] == 1 and pl["MaxEntries"] == 5, "CreateManagedPrefixList")
plid = pl["PrefixListId"]
entries = ec2.get_managed_prefix_list_entries(PrefixListId=plid)["Entries"]
check(sorted(entries, key=lambda e: e["Cidr"]) == [{"Cidr": "192.0.2.0/28"},
                                                    {"Cidr": "198.51.100.0/24", "Description": "partner A"}],
      "its entries, each with its description")
# Terraform's description-only change: AWS refuses a range both added and
# removed in one call, so the provider removes it, then adds it back.
fails("InvalidParameterValue", "a range both added and removed", ec2.modify_managed_prefix_list,
      PrefixListId=plid, AddEntries=[{"Cidr": "198.51.100.0/24", "Description": "partner B"}],
      RemoveEntries=[{"Cidr": "198.51.100.0/24"}])
v = ec2.modify_managed_prefix_list(PrefixListId=plid, CurrentVersion=1,
                                   RemoveEntries=[{"Cidr": "198.51.100.0/24"}])["PrefixList"]["Version"]
v = ec2.modify_managed_prefix_list(PrefixListId=plid, CurrentVersion=v,
                                   AddEntries=[{"Cidr": "198.51.100.0/24", "Description": "partner B"}])["PrefixList"]["Version"]
entries = ec2.get_managed_prefix_list_entries(PrefixListId=plid)["Entries"]
check({"Cidr": "198.51.100.0/24", "Description": "partner B"} in entries and v == 3,
      "a description changed as Terraform changes it (version 3)")
rds_id = groups["instagram-rds-security-group"]["GroupId"]
ec2.authorize_security_group_ingress(GroupId=rds_id, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 3306, "ToPort": 3306, "PrefixListIds": [{"PrefixListId": plid}]}])
changed = ec2.modify_managed_prefix_list(PrefixListId=plid, CurrentVersion=3, PrefixListName="partners-eu",
                                         AddEntries=[{"Cidr": "203.0.113.64/26"}],
                                         RemoveEntries=[{"Cidr": "192.0.2.0/28"}])["PrefixList"]
check(changed["Version"] == 4 and changed["PrefixListName"] == "partners-eu", "ModifyManagedPrefixList: version 4, renamed")
entries = ec2.get_managed_prefix_list_entries(PrefixListId=plid)["Entries"]
check(sorted(e["Cidr"] for e in entries) == ["198.51.100.0/24", "203.0.113.64/26"], "entries added and removed")
refs = [r for r in ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [rds_id]}])["SecurityGroupRules"]
        if r.get("PrefixListId") == plid]
check(len(refs) == 1, "the rule still references the renamed list")
fails("PrefixListVersionMismatch", "a change from an old version", ec2.modify_managed_prefix_list,
      PrefixListId=plid, CurrentVersion=3, AddEntries=[{"Cidr": "10.0.0.0/8"}])
fails("PrefixListMaxEntriesExceeded", "more entries than MaxEntries", ec2.modify_managed_prefix_list,
      PrefixListId=plid, AddEntries=[{"Cidr": f"10.{i}.0.0/16"} for i in range(4)])
fails("DependencyViolation", "deleting a list a rule references", ec2.delete_managed_prefix_list, PrefixListId=plid)
ec2.revoke_security_group_ingress(GroupId=rds_id, SecurityGroupRuleIds=[refs[0]["SecurityGroupRuleId"]])
gone = ec2.delete_managed_prefix_list(PrefixListId=plid)["PrefixList"]
check(gone["PrefixListId"] == plid, "DeleteManagedPrefixList")
fails("InvalidPrefixListID.NotFound", "a deleted list", ec2.get_managed_prefix_list_entries, PrefixListId=plid)

# The AWS CLI, as users type it.
def cli(*args):
    out = subprocess.run([aws, "--endpoint-url", endpoint, "--output", "json", "ec2", *args],
                         capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr

rc, out, err = cli("describe-security-groups", "--group-names", "instagram-rds-security-group")
check(rc == 0 and json.loads(out)["SecurityGroups"][0]["GroupName"] == "instagram-rds-security-group",
      "aws ec2 describe-security-groups --group-names")
rds = json.loads(out)["SecurityGroups"][0]["GroupId"]
rc, out, err = cli("authorize-security-group-ingress", "--group-id", rds, "--protocol", "tcp", "--port", "5432",
                   "--cidr", "10.0.1.0/24")
check(rc == 0 and json.loads(out)["SecurityGroupRules"][0]["FromPort"] == 5432, "aws ec2 authorize-security-group-ingress")
rc, out, err = cli("authorize-security-group-ingress", "--group-id", rds, "--protocol", "tcp", "--port", "5432",
                   "--cidr", "10.0.1.0/24")
check(rc != 0 and "InvalidPermission.Duplicate" in err, "the AWS CLI shows EC2's error code")
rc, out, err = cli("revoke-security-group-ingress", "--group-id", rds, "--protocol", "tcp", "--port", "5432",
                   "--cidr", "10.0.1.0/24")
check(rc == 0, "aws ec2 revoke-security-group-ingress")

# Not boto3: the wire. An unknown action, a malformed request.
def raw(body):
    req = urllib.request.Request(endpoint + "/", data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

status, body = raw(b"Action=LaunchRockets&Version=2016-11-15")
check(status == 400 and "<Code>InvalidAction</Code>" in body and "LaunchRockets" in body, "InvalidAction names the action")
status, body = raw(b"Action=Describe%zz")
check(status == 400 and "<Code>MalformedQueryString</Code>" in body, "a malformed query string")
status, body = raw(b"Version=2016-11-15")
check(status == 400 and "<Code>MissingParameter</Code>" in body, "no Action")
status, body = raw(b"Action=DescribeSecurityGroups&GroupId.1=" + b"x" * (2 << 20))
check(status == 400, "a body over the bound")
status, body = raw(b"Action=DescribeVpcs&Version=2016-11-15")
check(status == 200 and "<vpcSet>" in body, "the endpoint still answers")

done("api_calls")
