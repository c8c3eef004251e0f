# Shared by scripts/run and scripts/test: install missing Debian packages and
# make sure a recent enough Rust toolchain is on PATH.

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run this as root (palisade changes the kernel firewall; its tests build network namespaces)" >&2
        exit 1
    fi
}

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# ensure_rust: cargo >= 1.89 on PATH, from rustup if the system has none.
ensure_rust() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v cargo >/dev/null 2>&1; then
        apt_install ca-certificates curl gcc libc6-dev
        if apt-cache show rustup >/dev/null 2>&1; then
            apt_install rustup
            rustup default stable
        else
            echo "no Rust toolchain found; installing rustup (https://rustup.rs)"
            curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        fi
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    local v
    v=$(cargo --version | awk '{print $2}')
    if [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | head -1)" != "1.89.0" ]; then
        echo "cargo $v is too old: palisade needs Rust 1.89 or newer (rustup update stable)" >&2
        exit 1
    fi
}
