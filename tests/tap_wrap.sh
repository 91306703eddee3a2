#!/bin/sh
# Run a program that is not a TAP test (e.g. the brownout demo) as a one-case
# TAP test: "1..1", its own output, then "ok 1 - NAME" if it exits 0, else
# "not ok 1 - NAME". scripts/lib/count_tests.py fails a program that prints
# no plan, so a non-TAP program must be wrapped.
# usage: tap_wrap.sh NAME PROGRAM [ARGS...]
name=$1
shift
echo "1..1"
"$@"
rc=$?
if [ "$rc" -eq 0 ]; then
  echo "ok 1 - $name"
else
  echo "not ok 1 - $name (exit $rc)"
fi
exit "$rc"
