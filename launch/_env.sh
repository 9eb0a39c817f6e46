# Sourced by the launch scripts: make sure .venv exists and holds requirements.txt (reinstalled when it changes).
# Run from the repository root.
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv (first run only)"
    python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and alone, pinned, so nothing pulls a different (multi-GB CUDA) build.
    .venv/bin/python -m pip install --quiet "$(grep -E '^torch==' requirements.txt)"
    .venv/bin/python -m pip install --quiet -r requirements.txt
    .venv/bin/python -m pip install --quiet --no-deps -e .
    echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

# The demos' synthetic spike-camera data set in folder $1, generated the first time.
synth_data() {
    if [ ! -f "$1/meta.yaml" ]; then
        echo "[setup] generating synthetic spike-camera data in $1"
        ds-deblur synth --out "$1"
    fi
}
