"""calico-node's node side in pycni: start-up (Node, default pool, tunnel addresses) and felix."""
