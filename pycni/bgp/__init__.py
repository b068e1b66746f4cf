"""The BGP speaker's parts around exabgp (see docs/bgp.md).

`exabgp_api` (command text, JSON events), `exabgp_conf` (config rendering), `exabgp_process`
(the child process, relay socket, acks), `relay` / `exabgp_launch` (run by exabgp's side),
`speaker` (events -> snapshot updates, graceful-restart helper), `announcer` and `drivers` (the
Agent's drivers), `status` (calicoctl-style status), `paths`, and `testbed` (test/bench scaffolding).
The pure decisions live in `pycni.calc.bgp`.
"""
