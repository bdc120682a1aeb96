"""Sets moto's EC2 server up for `run --follow-ec2`: a group that allows
TCP 80 from one address, and an instance in it. Prints their ids as JSON.

Usage: moto_setup.py ENDPOINT ALLOWED_ADDRESS
"""

import json
import sys

from common import client

ec2 = client(sys.argv[1])
vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
group = ec2.create_security_group(GroupName="web", Description="HTTP from one address", VpcId=vpc)["GroupId"]
ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": f"{sys.argv[2]}/32"}]}])
image = ec2.describe_images()["Images"][0]["ImageId"]
instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SecurityGroupIds=[group])["Instances"][0]
print(json.dumps({"instance": instance["InstanceId"], "group": group}))
