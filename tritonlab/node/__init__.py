"""The GPU node's container path, run for real on a machine without a GPU (`make node-check`).

- `engine`: the Docker engine: the one running, else Debian's, installed and started here;
- `standins`: the Dockerfiles' base images, pulled, else stand-ins built locally and labelled;
- `check`: both images built from the project's Dockerfiles, both containers started from its
  compose.yaml (through gpu_node_setup.sh), the notebooks run in Docker mode inside the Jupyter
  container, the API and the key checked, one report.

Layer: on top, like `lab` and `gpu_check`; `engine` and `standins` use the standard library only.
"""
