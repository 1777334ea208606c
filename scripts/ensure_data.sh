#!/usr/bin/env bash
# Make sure the Fashion-MNIST IDX files are present. Installs Debian's dataset-fashion-mnist
# package when running as root; otherwise explains exactly what to do.
set -euo pipefail
dirs="${DEEPZIP_DATA:-} ${DEEPZIP_DATA:+${DEEPZIP_DATA}/fashion-mnist} $HOME/.cache/deepzip/fashion-mnist /usr/share/datasets/fashion-mnist"
want="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
have_all() {
  for f in $want; do
    [ -f "$1/$f" ] || [ -f "$1/$f.gz" ] || return 1
  done
}
for dir in $dirs; do
  if have_all "$dir"; then
    echo "Fashion-MNIST: found in $dir"
    exit 0
  fi
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  if have_all /usr/share/datasets/fashion-mnist; then exit 0; fi
fi
cat >&2 <<MSG
Fashion-MNIST was not found (looked in: $dirs).
Get it in one of these ways, then run make again:
  * Debian/Ubuntu:  sudo apt-get update && sudo apt-get install dataset-fashion-mnist
  * with a network: .venv/bin/deepzip download fashion-mnist
                    (writes ~/.cache/deepzip/fashion-mnist, which deepzip searches)
  * or put the four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
    t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in a directory and
    export DEEPZIP_DATA=that/directory
MSG
exit 1
