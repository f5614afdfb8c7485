#!/usr/bin/env bash
# Set up the Chameleon GPU node for the course (run there by notebook 00, as user cc, from the
# course folder): Docker with its Compose plugin and the NVIDIA container toolkit where the image
# lacks them, a check that containers see the GPUs, then both images built and both containers
# started. Each step can be re-run alone, and again: `bash tritonlab/gpu_node_setup.sh <step>`.
# `make node-check` runs the steps `images` and `containers` for real on a machine without a GPU
# (with COMPOSE_FILE naming compose.host-network.yaml instead of compose.node.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

compose_v2() { $SUDO docker compose version >/dev/null 2>&1; }

# Compose v2 (`docker compose`, which Docker's installer brings), else docker-compose 1.29 (a
# distribution's package): compose.yaml works with both. Project name and files come from .env.
compose() {
  if compose_v2; then
    $SUDO docker compose "$@"
  elif command -v docker-compose >/dev/null; then
    $SUDO docker-compose "$@"
  else
    echo "No Docker Compose here: run the docker_engine step first." >&2
    return 1
  fi
}

# One line of .env, written only when neither .env nor the environment sets it yet (a key once
# made is kept; `make node-check` sets all three in the environment and leaves .env alone).
env_line() {
  [ -n "${!1:-}" ] && return
  touch .env
  grep -q "^$1=" .env || echo "$1=$2" >> .env
}

docker_engine() {
  # Whether `docker compose` works, not merely whether a `docker` command exists: a
  # distribution's docker.io has no Compose v2 plugin, and the later steps use it.
  if command -v docker >/dev/null && compose_v2; then
    echo "docker present: $(docker --version); $($SUDO docker compose version)"
    return
  fi
  # Docker's own installer: Docker Engine with the buildx and Compose plugins (it replaces a
  # distribution's docker.io).
  curl -fsSL https://get.docker.com | $SUDO sh
  $SUDO usermod -aG docker "${USER:-$(id -un)}"
}

nvidia_toolkit() {
  if dpkg -s nvidia-container-toolkit >/dev/null 2>&1; then
    echo "nvidia-container-toolkit present"
  else
    curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \
      | $SUDO gpg --batch --yes --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
    curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
      | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
      | $SUDO tee /etc/apt/sources.list.d/nvidia-container-toolkit.list >/dev/null
    $SUDO apt-get update -qq
    $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvidia-container-toolkit
  fi
  local daemon_json=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json} before after
  before=$($SUDO cat "$daemon_json" 2>/dev/null || true)
  $SUDO nvidia-ctk runtime configure --runtime=docker >/dev/null
  # With systemd managing the containers' cgroups, a `systemctl daemon-reload` (which package
  # updates run) takes the GPUs away from running containers: "Failed to initialize NVML:
  # Unknown Error" (NVIDIA/nvidia-container-toolkit#48, open; NVIDIA's troubleshooting guide lists
  # the cgroupfs driver as a workaround). So Docker uses the cgroupfs driver.
  $SUDO python3 - "$daemon_json" <<'PY'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
config = json.loads(path.read_text() or "{}") if path.exists() else {}
opts = [o for o in config.get("exec-opts", []) if not o.startswith("native.cgroupdriver=")]
config["exec-opts"] = opts + ["native.cgroupdriver=cgroupfs"]
path.write_text(json.dumps(config, indent=2) + "\n")
PY
  after=$($SUDO cat "$daemon_json")
  if [ "$before" != "$after" ]; then
    echo "$daemon_json changed: restarting Docker"
    $SUDO systemctl restart docker
  fi
  echo "Docker's cgroup driver: $($SUDO docker info --format '{{.CgroupDriver}}')"
}

gpu_check() {
  $SUDO docker run --rm --gpus all ubuntu:24.04 nvidia-smi
  # nvtop: each GPU's load and memory over time, in a terminal on the node, while notebooks run
  command -v nvtop >/dev/null || $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvtop \
    || echo "nvtop could not be installed: use 'watch -n 1 nvidia-smi' instead"
}

images() {
  # .env, which Compose reads: the API key restricting Triton's model-repository and
  # model-config APIs, the project's name, and the files (the GPUs come from compose.node.yaml).
  # Values already in .env, or in the environment (`make node-check` sets them), are kept.
  env_line TRITONLAB_API_KEY "$(openssl rand -hex 16)"
  env_line COMPOSE_PROJECT_NAME tritonlab
  env_line COMPOSE_FILE compose.yaml:compose.node.yaml
  # Both images at once (each is mostly downloads: several GB of wheels): Compose v2 does so by
  # itself, 1.29 when asked.
  if compose_v2; then compose build; else compose build --parallel; fi
}

blip() {
  # BLIP is fetched and saved by the Triton image's own transformers: the version that loads it
  # (the 24.10 image has Python 3.10, so its transformers differs from the Jupyter image's).
  if [ -f model_repository/conditional_captioning/1/blip.json ]; then echo "BLIP present"; return; fi
  compose run --rm --no-deps -T triton python3 - <<'PY'
import datetime, json
from transformers import BlipForConditionalGeneration, BlipProcessor
hub, folder = "Salesforce/blip-image-captioning-base", "/models/conditional_captioning/1"
BlipProcessor.from_pretrained(hub).save_pretrained(f"{folder}/blip")
BlipForConditionalGeneration.from_pretrained(hub).save_pretrained(f"{folder}/blip")
meta = {"source": hub, "stand_in": False,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
json.dump(meta, open(f"{folder}/blip.json", "w"), indent=2)
PY
}

containers() {
  # Food-11 weights (downloaded once into the mounted repository), sample data and configs
  # first, so that Triton finds its models when it starts; BLIP is already there (step blip).
  compose run --rm --no-deps -T jupyter python -m tritonlab prepare
  compose up -d
  compose ps
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(docker_engine nvidia_toolkit gpu_check images blip containers)
for step in "${steps[@]}"; do
  echo "=== $step"
  began=$SECONDS
  "$step"
  echo "=== $step done in $(( (SECONDS - began) / 60 )) min $(( (SECONDS - began) % 60 )) s"
done
