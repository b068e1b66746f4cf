"""flannel's node agent: LeaseManager (subnet leases in etcd), subnet.env, the vxlan device and the
daemon that wires them to the Agent (see docs/flannel.md; the pure spec is `pycni.calc.flannel`)."""
