"""pycnictl subcommands. Each module here exposes `register(subparsers)`; `pycni_daemons.ctl` lists them."""
