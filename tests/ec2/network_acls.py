"""Network ACLs through EC2's API, with boto3, against `run --ec2-api` on
the seed architecture: the VPC's default network ACL as AWS shows it,
Terraform's `aws_network_acl` create, update and destroy sequences
(hashicorp/terraform-provider-aws, internal/service/ec2/vpc_network_acl.go:
create the ACL, its entries one by one, then move each subnet's
association; on destroy move them back to the VPC's default and delete),
and the calls' errors.

Usage: network_acls.py ENDPOINT
"""

import sys

from common import check, client, done, fails

endpoint = sys.argv[1]
ec2 = client(endpoint)

vpc_id = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
check(len(subnets) == 1, "the seed's VPC range is its one subnet")
subnet_id = subnets[0]["SubnetId"]

# The default network ACL, which every VPC has: everything allowed.
acls = ec2.describe_network_acls(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["NetworkAcls"]
check(len(acls) == 1 and acls[0]["IsDefault"], "a VPC's default network ACL")
default = acls[0]
check(default["NetworkAclId"].startswith("acl-") and default["OwnerId"] == "000000000000", "acl- id and owner")
entries = {(e["Egress"], e["RuleNumber"], e.get("CidrBlock") or e.get("Ipv6CidrBlock")): e for e in default["Entries"]}
check(entries[(False, 100, "0.0.0.0/0")]["RuleAction"] == "allow" and entries[(False, 100, "0.0.0.0/0")]["Protocol"] == "-1",
      "rule 100 allows everything in")
check((True, 101, "::/0") in entries, "rule 101 for IPv6, the VPC having an IPv6 range")
check(entries[(True, 32767, "0.0.0.0/0")]["RuleAction"] == "deny", "the * rule (32767) denies")
check(entries[(False, 32768, "::/0")]["RuleAction"] == "deny", "and for IPv6, rule 32768")
assoc = [a for a in default["Associations"] if a["SubnetId"] == subnet_id]
check(len(assoc) == 1 and assoc[0]["NetworkAclAssociationId"].startswith("aclassoc-"),
      "the default holds the subnet no other network ACL names")
by_subnet = ec2.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])["NetworkAcls"]
check([a["NetworkAclId"] for a in by_subnet] == [default["NetworkAclId"]], "filter association.subnet-id")
check(ec2.describe_network_acls(Filters=[{"Name": "default", "Values": ["false"]}])["NetworkAcls"] == [],
      "filter default")

# Terraform's create: CreateNetworkAcl, DescribeNetworkAcls until it is
# there, each entry, then the subnet's association moved.
acl = ec2.create_network_acl(
    VpcId=vpc_id,
    TagSpecifications=[{"ResourceType": "network-acl", "Tags": [{"Key": "Name", "Value": "public"}]}],
)["NetworkAcl"]
acl_id = acl["NetworkAclId"]
check(acl_id.startswith("acl-") and not acl["IsDefault"] and acl["VpcId"] == vpc_id, "CreateNetworkAcl")
check(acl["Tags"] == [{"Key": "Name", "Value": "public"}], "its tags")
check({(e["Egress"], e["RuleNumber"], e["RuleAction"]) for e in acl["Entries"]}
      >= {(False, 32767, "deny"), (True, 32767, "deny")} and len(acl["Associations"]) == 0,
      "a new network ACL denies everything and holds no subnet")
ec2.describe_network_acls(NetworkAclIds=[acl_id])
for rule, egress, action, proto, cidr, ports in [
    (100, False, "allow", "6", "0.0.0.0/0", (80, 80)),
    (110, False, "allow", "6", "0.0.0.0/0", (1024, 65535)),
    (120, False, "deny", "17", "10.9.0.0/16", (53, 53)),
    (100, True, "allow", "-1", "0.0.0.0/0", None),
]:
    # As the provider sends them: a PortRange always (0-0 where the
    # protocol has no ports).
    kwargs = dict(NetworkAclId=acl_id, RuleNumber=rule, Egress=egress, RuleAction=action, Protocol=proto,
                  CidrBlock=cidr, PortRange={"From": ports[0], "To": ports[1]} if ports else {"From": 0, "To": 0})
    ec2.create_network_acl_entry(**kwargs)
ec2.create_network_acl_entry(NetworkAclId=acl_id, RuleNumber=130, Egress=False, RuleAction="allow",
                             Protocol="1", CidrBlock="0.0.0.0/0", IcmpTypeCode={"Type": 8, "Code": -1},
                             PortRange={"From": 0, "To": 0})
ec2.create_network_acl_entry(NetworkAclId=acl_id, RuleNumber=140, Egress=False, RuleAction="allow",
                             Protocol="6", Ipv6CidrBlock="::/0", PortRange={"From": 80, "To": 80})
current = ec2.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])["NetworkAcls"][0]
assoc_id = [a for a in current["Associations"] if a["SubnetId"] == subnet_id][0]["NetworkAclAssociationId"]
new_assoc = ec2.replace_network_acl_association(AssociationId=assoc_id, NetworkAclId=acl_id)["NewAssociationId"]
check(new_assoc.startswith("aclassoc-") and new_assoc != assoc_id, "ReplaceNetworkAclAssociation: a new association id")

acl = ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"][0]
check([a["SubnetId"] for a in acl["Associations"]] == [subnet_id], "the subnet is the new network ACL's")
check(ec2.describe_network_acls(NetworkAclIds=[default["NetworkAclId"]])["NetworkAcls"][0]["Associations"] == [],
      "and no longer the default's")
got = {(e["Egress"], e["RuleNumber"]): e for e in acl["Entries"]}
check("PortRange" not in got[(True, 100)], "protocol -1: no PortRange (the provider reads 0-0 from its absence)")
check(got[(False, 100)]["PortRange"] == {"From": 80, "To": 80} and got[(False, 100)]["Protocol"] == "6",
      "entries answered with protocol numbers and port ranges")
check(got[(False, 130)]["IcmpTypeCode"] == {"Type": 8, "Code": -1}, "an ICMP entry's type and code")
check(got[(False, 140)]["Ipv6CidrBlock"] == "::/0" and "CidrBlock" not in got[(False, 140)], "IPv6 entries apart")
check(got[(False, 120)]["RuleAction"] == "deny", "deny entries")

# Terraform's update of a rule: ReplaceNetworkAclEntry, or delete and create.
ec2.replace_network_acl_entry(NetworkAclId=acl_id, RuleNumber=120, Egress=False, RuleAction="allow",
                              Protocol="17", CidrBlock="10.9.0.0/16", PortRange={"From": 53, "To": 53})
got = {(e["Egress"], e["RuleNumber"]): e for e in ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"][0]["Entries"]}
check(got[(False, 120)]["RuleAction"] == "allow", "ReplaceNetworkAclEntry")

# Errors, as EC2 answers them.
fails("NetworkAclEntryAlreadyExists", "a rule number taken", ec2.create_network_acl_entry,
      NetworkAclId=acl_id, RuleNumber=100, Egress=False, RuleAction="deny", Protocol="-1", CidrBlock="0.0.0.0/0")
fails("InvalidNetworkAclEntry.NotFound", "deleting an entry that is not there", ec2.delete_network_acl_entry,
      NetworkAclId=acl_id, RuleNumber=999, Egress=False)
fails("InvalidNetworkAclEntry.NotFound", "replacing an entry that is not there", ec2.replace_network_acl_entry,
      NetworkAclId=acl_id, RuleNumber=999, Egress=True, RuleAction="deny", Protocol="-1", CidrBlock="0.0.0.0/0")
fails("InvalidNetworkAclID.NotFound", "an unknown network ACL", ec2.describe_network_acls, NetworkAclIds=["acl-0123456789abcdef0"])
fails("InvalidParameterValue", "rule number 32767 is AWS's", ec2.create_network_acl_entry,
      NetworkAclId=acl_id, RuleNumber=32767, Egress=False, RuleAction="deny", Protocol="-1", CidrBlock="0.0.0.0/0")
fails("MissingParameter", "TCP without a port range", ec2.create_network_acl_entry,
      NetworkAclId=acl_id, RuleNumber=150, Egress=False, RuleAction="deny", Protocol="6", CidrBlock="0.0.0.0/0")
fails("DependencyViolation", "a network ACL that holds a subnet", ec2.delete_network_acl, NetworkAclId=acl_id)
fails("InvalidParameterValue", "the default network ACL", ec2.delete_network_acl, NetworkAclId=default["NetworkAclId"])
fails("InvalidAssociationID.NotFound", "an unknown association", ec2.replace_network_acl_association,
      AssociationId="aclassoc-0123456789abcdef0", NetworkAclId=acl_id)

# An entry of the default network ACL: the file gets the default's table
# (AWS's rules 100 and 101 kept).
ec2.create_network_acl_entry(NetworkAclId=default["NetworkAclId"], RuleNumber=90, Egress=False, RuleAction="deny",
                             Protocol="6", CidrBlock="192.0.2.0/24", PortRange={"From": 25, "To": 25})
d = ec2.describe_network_acls(NetworkAclIds=[default["NetworkAclId"]])["NetworkAcls"][0]
check({(e["Egress"], e["RuleNumber"]) for e in d["Entries"]} >= {(False, 90), (False, 100), (False, 101), (True, 100)},
      "an entry added to the default keeps its rules 100 and 101")
ec2.delete_network_acl_entry(NetworkAclId=default["NetworkAclId"], RuleNumber=90, Egress=False)

# Terraform's destroy: each association back to the VPC's default, then
# DeleteNetworkAcl.
dflt = ec2.describe_network_acls(Filters=[{"Name": "default", "Values": ["true"]},
                                          {"Name": "vpc-id", "Values": [vpc_id]}])["NetworkAcls"][0]
for a in ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"][0]["Associations"]:
    ec2.replace_network_acl_association(AssociationId=a["NetworkAclAssociationId"], NetworkAclId=dflt["NetworkAclId"])
ec2.delete_network_acl(NetworkAclId=acl_id)
check([a["NetworkAclId"] for a in ec2.describe_network_acls()["NetworkAcls"]] == [default["NetworkAclId"]],
      "destroyed: the default alone, holding the subnet again")
check(len(ec2.describe_network_acls()["NetworkAcls"][0]["Associations"]) == 1, "the subnet back in the default")

done("network_acls.py")
