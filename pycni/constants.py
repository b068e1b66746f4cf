"""Names and numbers that mark what pycni owns in the kernel.

Every route a pycni writer installs carries that writer's route protocol number, so a restarted
daemon can sweep its own stale routes by mark, with no history, and never touch anyone else's
(Calico's design notes say felix should have done this from day one). The names are installed to
`/etc/iproute2/rt_protos.d/pycni.conf` so `ip route` prints them.
"""

from __future__ import annotations

RTPROT_BOOT = 3
RTPROT_STATIC = 4
RTPROT_BIRD = 12

#: felix-like agent: /32 routes to local workloads, blackholes for own blocks, tunnel routes.
#: 80 is the number Calico's felix uses, so operators' habits carry over.
RTPROT_FELIX = 80
#: BGP speaker: routes learned from peers.
RTPROT_BGPD = 81
#: flanneld-like lease manager: host-gw / vxlan / DirectRouting routes to remote leases.
RTPROT_FLANNELD = 82

RT_PROTO_NAMES = {RTPROT_FELIX: "pycni-felix", RTPROT_BGPD: "pycni-bgpd", RTPROT_FLANNELD: "pycni-flannel"}

MAIN_TABLE = 254

CALI_PREFIX = "cali"
CALI_HOST_MAC = "ee:ee:ee:ee:ee:ee"
CALI_GATEWAY = "169.254.1.1"
CALI_VXLAN_DEV = "vxlan.calico"
CALI_VXLAN_VNI = 4096
CALI_VXLAN_PORT = 4789
IPIP_DEV = "tunl0"
FLANNEL_BRIDGE = "cni0"
FLANNEL_VXLAN_PORT = 8472
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
