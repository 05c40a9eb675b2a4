"""Imported first by the fork server (see ``kelpseg.parallel.FORKSERVER_PRELOAD``): importing it
applies the worker-process policy to the server and to every process it forks."""

from kelpseg.parallel import install_in_fork_server

install_in_fork_server()
