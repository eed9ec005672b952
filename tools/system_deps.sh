#!/usr/bin/env bash
# Install the Debian packages a purpose needs, where they are missing: `demo` (make demo: the digits recipe's
# synthesized voices) or `test` (make test, as CI runs it). As root it runs apt-get; with sudo, sudo apt-get;
# otherwise it prints the command to run and fails.
#
#   bash tools/system_deps.sh demo|test
set -euo pipefail

purpose=${1:-}
missing=()
need_tool() { command -v "$1" >/dev/null 2>&1 || missing+=("${2:-$1}"); }

case "$purpose" in
  demo|test)
    # espeak-ng and sox synthesize the digits recipe's voices; Asterisk's Allison (a real voice) is its held-out set.
    need_tool espeak-ng
    need_tool sox
    [ -f /usr/share/asterisk/sounds/en_US_f_Allison/digits/0.wav ] || missing+=(asterisk-core-sounds-en-wav)
    ;;&
  test)
    # flite voices the synthetic LibriSpeech-shaped corpora of the recipe tests; shellcheck checks the recipes quote
    # their variables; make runs the README's commands; chromium and its driver run the page of `asr serve`.
    need_tool flite
    need_tool make
    need_tool shellcheck
    need_tool chromium
    need_tool chromedriver chromium-driver
    ;;
  demo) ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt=(apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo apt-get)
else
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
"${apt[@]}" update -qq
DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null
