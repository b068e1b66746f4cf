"""pycni: the node side of a Kubernetes pod network (flannel and Calico), in Python."""

__version__ = "0.1.0"
