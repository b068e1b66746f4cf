"""In-process entry point of the CNI plugin (the front execs this when no agent listens).

All logic is in `pycni.cni`; this composition root only hands over to the skeleton.
"""

from pycni.cni.skel import main

if __name__ == "__main__":
    main()
