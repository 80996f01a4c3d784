#!/usr/bin/env bash
# Install the offline kit from an air-gap bundle. Copied into the bundle as install.sh by
# scripts/make-bundle; run it from anywhere:   bash /media/usb/offline-bundle/install.sh
#
#   1. verifies the Ed25519 signature of SHA256SUMS with pub.pem (openssl; python+cryptography only
#      if no OpenSSL 3 is available), then every checksum, and that no file was added or removed;
#      any mismatch aborts before anything is installed;
#   2. creates a virtual environment and installs with `pip install --no-index --find-links wheelhouse`
#      only (pip configuration files and PIP_* index variables are ignored);
#   3. copies the models into the models folder;
#   4. runs `offline doctor`.
#
# Options:
#   --venv DIR               virtual environment to create   [default: $OFFLINE_HOME/venv]
#   --models-dir DIR         where the models go              [default: $OFFLINE_MODELS_DIR, else $OFFLINE_HOME/models]
#   --python PY              Python 3.11 interpreter          [default: python3.11, else python3]
#   --expect-key-sha256 HEX  abort unless pub.pem has this fingerprint (sha256 of its DER form);
#                            get it from the bundle's builder over a channel you trust
#   --verify-only            stop after the verification
#   --no-doctor              skip the final `offline doctor`
# OFFLINE_HOME defaults to ~/.local/share/offline (the kit's own default).
set -euo pipefail
umask 022

BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_HOME="${OFFLINE_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/offline}"
VENV="$DATA_HOME/venv"
MODELS_DIR="${OFFLINE_MODELS_DIR:-$DATA_HOME/models}"
PYTHON=""
EXPECT_KEY=""
VERIFY_ONLY=0
DOCTOR=1

say() { printf '[install] %s\n' "$*" >&2; }
die() { printf 'Error: %s\n' "$*" >&2; exit 1; }
abort_tampered() { printf 'Error: BUNDLE REJECTED: %s\nNothing was installed. Get a fresh copy of the bundle from its builder.\n' "$*" >&2; exit 5; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
        --models-dir) MODELS_DIR="${2:?--models-dir needs a folder}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --expect-key-sha256) EXPECT_KEY="$(printf '%s' "${2:?--expect-key-sha256 needs a hex digest}" | tr 'A-F' 'a-f')"; shift 2 ;;
        --verify-only) VERIFY_ONLY=1; shift ;;
        --no-doctor) DOCTOR=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) printf 'Error: unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
done

cd "$BUNDLE"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"
for f in SHA256SUMS SHA256SUMS.sig pub.pem; do
    [[ -f "$f" ]] || abort_tampered "$f is missing from $BUNDLE"
done

# ---- 1. signature ---------------------------------------------------------------------------
openssl_ok=0
if command -v openssl >/dev/null; then
    case "$(openssl version 2>/dev/null)" in OpenSSL\ [3-9]*) openssl_ok=1 ;; esac
fi
if [[ "$openssl_ok" == 1 ]]; then
    fingerprint="$(openssl pkey -pubin -in pub.pem -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1)" \
        || abort_tampered "pub.pem is not a valid public key"
    if ! openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig \
            >/dev/null 2>&1; then
        abort_tampered "the signature of SHA256SUMS does not verify with pub.pem (the checksum list was altered)"
    fi
    verifier="openssl"
else
    # No OpenSSL 3 (pkeyutl -rawin is needed for Ed25519): fall back to python + cryptography.
    py="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
    [[ -n "$py" ]] && "$py" -c 'import cryptography' 2>/dev/null \
        || die "cannot verify the signature: install OpenSSL 3 (or python3 with the cryptography package)"
    fingerprint="$("$py" - <<'PY'
import hashlib, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
try:
    pub = serialization.load_pem_public_key(open("pub.pem", "rb").read())
    assert isinstance(pub, Ed25519PublicKey)
    pub.verify(open("SHA256SUMS.sig", "rb").read(), open("SHA256SUMS", "rb").read())
except (InvalidSignature, ValueError, AssertionError):
    sys.exit(1)
print(hashlib.sha256(pub.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest())
PY
)" || abort_tampered "the signature of SHA256SUMS does not verify with pub.pem (the checksum list was altered)"
    verifier="python cryptography"
fi
if [[ -n "$EXPECT_KEY" && "$fingerprint" != "$EXPECT_KEY" ]]; then
    abort_tampered "pub.pem has fingerprint $fingerprint, not the expected $EXPECT_KEY (bundle signed by someone else)"
fi
say "signature OK ($verifier); signing key sha256 $fingerprint"
[[ -n "$EXPECT_KEY" ]] || say "compare that fingerprint with the one the bundle's builder gave you (or pass --expect-key-sha256)"

# ---- 2. checksums, and nothing added --------------------------------------------------------
# Every line must be "<64 hex>  ./<path>" with no '..' component: a list naming files outside the
# bundle is refused rather than followed.
if grep -qvE '^[0-9a-f]{64}  \./[^/]' SHA256SUMS || grep -qE '(^|/)\.\.(/|$)' SHA256SUMS; then
    abort_tampered "SHA256SUMS has malformed or unsafe lines"
fi
if ! out="$(sha256sum --strict -c SHA256SUMS 2>&1)"; then
    abort_tampered "checksum mismatch or missing file(s): $(printf '%s\n' "$out" | grep -v ': OK$' | head -5 | tr '\n' ' ')"
fi
listed="$(cut -c67- SHA256SUMS | LC_ALL=C sort)"
present="$(find . -type f ! -path ./SHA256SUMS ! -path ./SHA256SUMS.sig ! -path ./pub.pem | LC_ALL=C sort)"
if [[ "$listed" != "$present" ]]; then
    extra="$(comm -13 <(printf '%s\n' "$listed") <(printf '%s\n' "$present") | head -5 | tr '\n' ' ')"
    abort_tampered "file(s) not covered by SHA256SUMS: ${extra:-(symlinks or special files)}"
fi
if [[ -n "$(find . ! -type f ! -type d | head -1)" ]]; then
    abort_tampered "the bundle contains symlinks or special files"
fi
say "all $(wc -l < SHA256SUMS) files match SHA256SUMS"
[[ "$VERIFY_ONLY" == 1 ]] && { say "verification only: nothing installed"; exit 0; }

# ---- 3. install from the wheelhouse only ----------------------------------------------------
# shellcheck disable=SC1091
source ./BUNDLE-INFO
if [[ -z "$PYTHON" ]]; then
    PYTHON="$(command -v "python$PYTHON_VERSION" || command -v python3 || true)"
fi
[[ -n "$PYTHON" ]] || die "Python $PYTHON_VERSION not found (pass --python)"
have="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$have" == "$PYTHON_VERSION" ]] || die "this bundle was built for Python $PYTHON_VERSION, $PYTHON is $have"

if [[ -e "$VENV" && ! -x "$VENV/bin/python" ]]; then
    die "$VENV exists and is not a virtual environment; choose another --venv"
fi
say "creating the virtual environment $VENV"
"$PYTHON" -m venv "$VENV"
say "installing $PROJECT==$VERSION from the bundle's wheelhouse (no index, no network)"
env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_TRUSTED_HOST \
    PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$BUNDLE/wheelhouse" \
    --only-binary=:all: -c "$BUNDLE/constraints.txt" "$PROJECT==$VERSION" \
    || die "pip could not install from the wheelhouse (see above)"

# ---- 4. models ------------------------------------------------------------------------------
mkdir -p "$MODELS_DIR"
for src in models/*; do
    name="$(basename "$src")"
    dst="$MODELS_DIR/$name"
    tmp="$MODELS_DIR/.$name.partial-$$"
    rm -rf "$tmp"
    cp -R "$src" "$tmp"
    rm -rf "$dst"
    mv "$tmp" "$dst"
done
say "models copied to $MODELS_DIR"

# The installed package finds its pinned-model manifest and models through these variables.
ENV_FILE="$VENV/offline.env"
{
    printf 'export OFFLINE_MODELS_DIR=%q\n' "$MODELS_DIR"
    printf 'export OFFLINE_MODELS_MANIFEST=%q\n' "$MODELS_DIR/manifest.toml"
    printf 'export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1\n'
} > "$ENV_FILE"
grep -q "offline.env" "$VENV/bin/activate" || printf '\n. "%s"\n' "$ENV_FILE" >> "$VENV/bin/activate"
# shellcheck disable=SC1090
. "$ENV_FILE"

# ---- 5. doctor ------------------------------------------------------------------------------
if [[ "$DOCTOR" == 1 ]]; then
    say "running offline doctor"
    "$VENV/bin/offline" doctor || die "offline doctor reported a failure (see the FAIL lines above)"
fi
if compgen -G "$BUNDLE/debs/*.deb" >/dev/null; then
    say "OCR of scanned pages needs Tesseract: as root, run  dpkg -i $BUNDLE/debs/*.deb  (verified above)"
fi
say "done. Use it with:  . $VENV/bin/activate && offline --help"
