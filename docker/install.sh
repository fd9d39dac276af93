#!/usr/bin/env bash
# Install tamis from a source tree with pip, then check that the install works.
#
# This is the one install path: docker/Dockerfile, docker/Dockerfile.gpu and CI
# (tests/test_docker_install.py) all run it.
#
# Usage:
#   docker/install.sh [--extras LIST] [--python PYTHON] [--src DIR] [--no-verify]
#
# Options:
#   --extras LIST    comma-separated extras of the tamis package, e.g. "gpu" or
#                    "gpu,rapids" (default: none)
#   --python PYTHON  interpreter to install into (default: python3)
#   --src DIR        source tree holding pyproject.toml (default: the parent of
#                    the docker/ directory this script lives in)
#   --no-verify      skip the GPU import checks (CuPy for gpu/gpu-cuda13, cuDF and
#                    cuML for rapids); image build machines often have no GPU.
#                    tamis itself is always checked, since that needs no GPU.
#   -h, --help       show this help and exit
#
# Steps:
#   1. $PYTHON -m pip install --no-cache-dir "$SRC[extras]"
#   2. `import tamis` works and the installed `tamis --version` runs (checked from
#      /, so the source tree cannot shadow the installed package);
#      every requested extra is one the package declares;
#   3. unless --no-verify: the GPU modules of the requested extras import.
#
# A GPU extra whose modules are already importable is not installed again. The
# RAPIDS images ship CuPy, cuDF and cuML from conda; pip does not know that the
# conda "cupy" satisfies "cupy-cuda12x" and would unpack a second CuPy over the
# first, which breaks both. The script says so when it skips an extra.
#
# Network: only what pip itself fetches from its configured package index.
#
# Exit codes:
#   0  installed and verified
#   2  usage error: unknown option, missing or malformed value, no such
#      interpreter or source tree, Python older than 3.10, no pip, or an extra
#      the package does not declare
#   3  pip install failed
#   4  verification failed

set -euo pipefail

PROG=install.sh
EXIT_USAGE=2
EXIT_INSTALL=3
EXIT_VERIFY=4

die() {
    local code=$1
    shift
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit "$code"
}

say() {
    printf '%s: %s\n' "$PROG" "$*"
}

usage() {
    sed -n '/^# Usage:/,/^#   -h, --help/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# Run the target interpreter from / in isolated mode (-I: no PYTHONPATH, no user
# site, no current directory on sys.path), so a source checkout is never imported
# by mistake.
py() {
    (cd / && "$PYTHON" -I "$@")
}

# The top-level modules that a GPU extra provides, empty for other extras.
extra_modules() {
    case $1 in
        gpu | gpu-cuda12 | gpu-cuda13) echo "cupy" ;;
        rapids) echo "cudf cuml" ;;
        *) echo "" ;;
    esac
}

# Extra names compared the way packaging does (PEP 685): lower case, runs of
# "-", "_" and "." become "-".
normalize_extra() {
    printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | sed 's/[-_.][-_.]*/-/g'
}

EXTRAS=""
PYTHON=python3
SRC=""
VERIFY_GPU=1

need_value() {
    # $1: option name, $2: number of arguments left including the option
    [ "$2" -ge 2 ] || die "$EXIT_USAGE" "option $1 needs a value (run with --help for usage)"
}

while [ $# -gt 0 ]; do
    case $1 in
        --extras)
            need_value "$1" $#
            EXTRAS=$2
            shift 2
            ;;
        --extras=*)
            EXTRAS=${1#*=}
            shift
            ;;
        --python)
            need_value "$1" $#
            PYTHON=$2
            shift 2
            ;;
        --python=*)
            PYTHON=${1#*=}
            shift
            ;;
        --src)
            need_value "$1" $#
            SRC=$2
            shift 2
            ;;
        --src=*)
            SRC=${1#*=}
            shift
            ;;
        --no-verify)
            VERIFY_GPU=0
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            die "$EXIT_USAGE" "unknown option '$1' (run with --help for usage)"
            ;;
        *)
            die "$EXIT_USAGE" "unexpected argument '$1'; options only (run with --help for usage)"
            ;;
    esac
done

# --- Check the inputs before touching anything -------------------------------

EXTRAS=$(printf '%s' "$EXTRAS" | sed 's/[[:space:]]*,[[:space:]]*/,/g; s/^[[:space:]]*//; s/[[:space:]]*$//')
if [ -n "$EXTRAS" ] && ! printf '%s' "$EXTRAS" | grep -Eq '^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$'; then
    die "$EXIT_USAGE" "--extras '$EXTRAS' is not a comma-separated list of extra names, e.g. --extras gpu,rapids"
fi

if [ -z "$SRC" ]; then
    SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
fi
[ -d "$SRC" ] || die "$EXIT_USAGE" "source directory '$SRC' does not exist; pass --src DIR with the tamis checkout"
SRC=$(cd -- "$SRC" && pwd -P)
[ -f "$SRC/pyproject.toml" ] || die "$EXIT_USAGE" "no pyproject.toml in '$SRC'; pass --src DIR with the tamis checkout"

command -v -- "$PYTHON" >/dev/null 2>&1 \
    || die "$EXIT_USAGE" "Python interpreter '$PYTHON' not found; pass --python with a path or a command on PATH"
# py() runs from /, so a relative path such as .venv/bin/python must be made absolute.
case $PYTHON in
    /*) ;;
    */*) PYTHON="$(pwd -P)/$PYTHON" ;;
esac
py -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$EXIT_USAGE" "tamis needs Python >= 3.10, but '$PYTHON' is $(py -c 'import platform; print(platform.python_version())' 2>/dev/null || echo 'unusable')"
py -m pip --version >/dev/null 2>&1 \
    || die "$EXIT_USAGE" "pip is not available for '$PYTHON'; install it with: $PYTHON -m ensurepip --upgrade"

# --- Decide which extras pip installs ----------------------------------------

INSTALL_EXTRAS=""
GPU_MODULES=""
IFS=, read -r -a requested <<<"$EXTRAS"
for extra in ${requested[@]+"${requested[@]}"}; do
    modules=$(extra_modules "$(normalize_extra "$extra")")
    GPU_MODULES="$GPU_MODULES $modules"
    # shellcheck disable=SC2086  # word splitting of the module list is intended
    if [ -n "$modules" ] && py -c 'import importlib.util, sys; sys.exit(not all(importlib.util.find_spec(m) for m in sys.argv[1:]))' $modules; then
        # shellcheck disable=SC2086
        provided=$(py -c 'import importlib.metadata as md, sys; d = md.packages_distributions(); print(", ".join(sorted({f"{n} {md.version(n)}" for m in sys.argv[1:] for n in d.get(m, [m])})))' $modules 2>/dev/null || echo "$modules")
        say "extra '$extra' not installed: its modules ($modules) are already provided by $provided; a second copy from pip would overwrite the first"
        continue
    fi
    INSTALL_EXTRAS="${INSTALL_EXTRAS:+$INSTALL_EXTRAS,}$extra"
done

SPEC=$SRC
[ -z "$INSTALL_EXTRAS" ] || SPEC="${SRC}[${INSTALL_EXTRAS}]"

# --- Install ------------------------------------------------------------------

say "installing $SPEC with $(command -v -- "$PYTHON")"
if ! py -m pip install --no-cache-dir "$SPEC"; then
    die "$EXIT_INSTALL" "pip install of '$SPEC' failed; see pip's messages above"
fi

# --- Verify -------------------------------------------------------------------

py -c 'import tamis' \
    || die "$EXIT_VERIFY" "'import tamis' failed in '$PYTHON' after the install; see the traceback above"

if [ -n "$EXTRAS" ]; then
    unknown=$(py -c '
import importlib.metadata as md, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
declared = {norm(e) for e in md.metadata("tamis").get_all("Provides-Extra") or []}
print(" ".join(e for e in sys.argv[1].split(",") if norm(e) not in declared))
print(", ".join(sorted(declared)) or "none")
' "$EXTRAS")
    bad=$(printf '%s\n' "$unknown" | sed -n 1p)
    declared=$(printf '%s\n' "$unknown" | sed -n 2p)
    [ -z "$bad" ] || die "$EXIT_USAGE" "unknown extra(s) '$bad' (pip installed tamis without them); tamis declares: $declared"
fi

# pip runs with -I, so it never falls back to a --user install: the console
# script lands in the interpreter's own scripts directory.
TAMIS_BIN="$(py -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/tamis"
[ -x "$TAMIS_BIN" ] \
    || die "$EXIT_VERIFY" "the 'tamis' console script was not installed in the scripts directory of '$PYTHON'; check [project.scripts] in $SRC/pyproject.toml"
version=$(cd / && "$TAMIS_BIN" --version) \
    || die "$EXIT_VERIFY" "'$TAMIS_BIN --version' failed; see its messages above"
say "verified: $TAMIS_BIN --version -> $version"

# shellcheck disable=SC2086  # one module per line: splitting is intended
GPU_MODULES=$(printf '%s\n' $GPU_MODULES | sort -u | tr '\n' ' ' | sed 's/^ *//; s/ *$//')
if [ -n "$GPU_MODULES" ]; then
    if [ "$VERIFY_GPU" = 1 ]; then
        for module in $GPU_MODULES; do
            py -c "import $module" \
                || die "$EXIT_VERIFY" "'import $module' failed in '$PYTHON'; it needs an NVIDIA driver and CUDA libraries (pass --no-verify where no GPU is present, e.g. when building an image)"
        done
        say "verified: import $GPU_MODULES"
    else
        say "skipped GPU import checks of: $GPU_MODULES (--no-verify)"
    fi
fi

say "done"
