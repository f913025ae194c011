# Sourced by the probe scripts (run from the repository root): probe trees and their patches.

# A fresh copy of HEAD under .probe/<name> (the files themselves where the device's copy of the
# working tree has no repository).
fresh_tree() {
  rm -rf ".probe/$1" && mkdir -p ".probe/$1"
  git archive HEAD 2>/dev/null | tar -x -C ".probe/$1" ||
    cp -r CMakeLists.txt CMakePresets.json bench cmake examples include src tests tools ".probe/$1/"
}

# A patch into a directory (. for the working tree): patch(1) where there is one, else git apply.
apply_patch() {
  if command -v patch >/dev/null; then
    patch -s -d "$1" -p1 <"$2"
  elif [ "$1" = . ]; then
    git apply "$2"
  else
    git apply --directory="$1" "$2"
  fi
}
