#!/bin/sh
# The LVM backend of internal/cow against the real volume groups. Only the
# TestLVM* tests: the file backend has its own tier on the host.
[ -x /payload/bin/cow.test ] || { echo "cow.test missing: internal/cow tests did not build"; exit 1; }
/payload/bin/cow.test -test.v -test.count=1 -test.timeout=240s -test.run '^TestLVM' >/tmp/cow.out 2>&1
rc=$?
cat /tmp/cow.out
# A run that matched no test must not pass.
if grep -q "no tests to run" /tmp/cow.out; then
	echo "no TestLVM tests ran"
	exit 1
fi
exit $rc
