"""Revokes in moto what moto_setup.py authorized.

Usage: moto_revoke.py ENDPOINT GROUP_ID ALLOWED_ADDRESS
"""

import sys

from common import client

client(sys.argv[1]).revoke_security_group_ingress(GroupId=sys.argv[2], IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": f"{sys.argv[3]}/32"}]}])
print("revoked")
