#!/bin/sh
# A stand-in for the GitHub CLI, for the end-to-end tests only (never in the image): the
# control server runs it (--gh-path) through each town's gh shim. `gh auth token` prints the
# token gh would use, here GH_TOKEN as the shim set it for this run, or fails as gh does
# without one. The demo agent's [demo:gh] reports only its SHA-256 fingerprint.
if [ "$1" != auth ] || [ "$2" != token ]; then
  echo "fake gh: only \`gh auth token\` is known here" >&2
  exit 2
fi
if [ -n "$GH_TOKEN" ]; then
  printf '%s\n' "$GH_TOKEN"
  exit 0
fi
echo "no oauth token found for github.com" >&2
exit 1
