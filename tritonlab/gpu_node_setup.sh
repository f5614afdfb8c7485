#!/usr/bin/env bash
# Set up the Chameleon GPU node for the course (run there by notebook 00, as user cc, from the
# course folder): Docker and the NVIDIA container toolkit where the image lacks them, a check
# that containers see the GPUs, then both images built and both containers started.
# Each step can be re-run alone: `bash tritonlab/gpu_node_setup.sh <step>`.
set -euo pipefail
cd "$(dirname "$0")/.."

docker_engine() {
  if command -v docker >/dev/null; then echo "docker present: $(docker --version)"; return; fi
  curl -fsSL https://get.docker.com | sudo sh
  sudo usermod -aG docker "$USER"
}

nvidia_toolkit() {
  if dpkg -s nvidia-container-toolkit >/dev/null 2>&1; then echo "nvidia-container-toolkit present"; return; fi
  curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \
    | sudo gpg --batch --yes --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
    | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
    | sudo tee /etc/apt/sources.list.d/nvidia-container-toolkit.list >/dev/null
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvidia-container-toolkit
  sudo nvidia-ctk runtime configure --runtime=docker
  sudo systemctl restart docker
}

gpu_check() {
  sudo docker run --rm --gpus all ubuntu:24.04 nvidia-smi
  # nvtop: each GPU's load and memory over time, in a terminal on the node, while notebooks run
  command -v nvtop >/dev/null || sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvtop \
    || echo "nvtop could not be installed: use 'watch -n 1 nvidia-smi' instead"
}

images() {
  # The API key restricting Triton's model-repository and model-config APIs; kept in .env,
  # which docker compose reads.
  [ -f .env ] || echo "TRITONLAB_API_KEY=$(openssl rand -hex 16)" > .env
  sudo docker compose build
}

blip() {
  # BLIP is fetched and saved by the Triton image's own transformers: the version that loads it
  # (the 24.10 image has Python 3.10, so its transformers differs from the Jupyter image's).
  if [ -f model_repository/conditional_captioning/1/blip.json ]; then echo "BLIP present"; return; fi
  sudo docker compose run --rm --no-deps -T triton python3 - <<'PY'
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
  sudo docker compose run --rm --no-deps jupyter python -m tritonlab prepare
  sudo docker compose up -d
  sudo docker compose ps
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(docker_engine nvidia_toolkit gpu_check images blip containers)
for step in "${steps[@]}"; do
  echo "=== $step"
  began=$SECONDS
  "$step"
  echo "=== $step done in $(( (SECONDS - began) / 60 )) min $(( (SECONDS - began) % 60 )) s"
done
