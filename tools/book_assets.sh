#!/usr/bin/env bash
# Install the browser assets the built book serves itself, so that no page loads anything from a CDN:
# the ipywidgets HTML manager (@jupyter-widgets/html-manager) and RequireJS, at the versions pinned
# in tools/book_assets/package-lock.json, from the npm registry. (MathJax comes from the Python
# package sphinx-mathjax-offline, in the `book` extra.)
#
# The files are staged in tools/book_assets/static/ (git-ignored), which _config.yml lists in
# `html_static_path`: Sphinx copies it into _build/html/_static/. Run this before
# `jupyter-book build` (`make book` does); without it the build fails under -W with
# "html_static_path entry ... does not exist". npm runs only when the lock file changed since the
# last install; otherwise this takes well under a second and needs no network.
set -euo pipefail
cd "$(dirname "$0")/book_assets"

stamp=node_modules/.book_assets.lock   # the lock file node_modules was installed from
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  if ! command -v npm >/dev/null; then
    echo "book_assets.sh: npm (Node.js) is needed to install the book's widget assets;" \
         "install Node.js and npm (e.g. apt-get install nodejs npm) and run again" >&2
    exit 1
  fi
  # exact versions from the lock file; the files are only copied, so no install scripts
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

manager=node_modules/@jupyter-widgets/html-manager/dist
rm -rf static
mkdir -p static/ipywidgets
# embed-amd.js is self-contained (the manager, base, controls and output widgets as AMD modules);
# the font files beside it are the Font Awesome fonts its CSS refers to. Source maps are left out.
cp "$manager"/embed-amd.js "$manager"/embed.js.LICENSE.txt static/ipywidgets/
find "$manager" -maxdepth 1 -type f \( -name '*.woff' -o -name '*.woff2' -o -name '*.ttf' \
     -o -name '*.eot' -o -name '*.svg' \) -exec cp {} static/ipywidgets/ \;
cp node_modules/requirejs/require.js static/ipywidgets/
cp widgets-offline.js static/ipywidgets/
echo "book_assets.sh: $(ls static/ipywidgets | wc -l) files staged in tools/book_assets/static/ipywidgets"
