#!/bin/sh
# The internal/lvm tests against the real volume groups.
exec /payload/bin/lvm.test -test.v -test.count=1 -test.timeout=120s
