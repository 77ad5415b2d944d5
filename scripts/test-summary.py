#!/usr/bin/env python3
"""Prints "N passed, N failed" over every GoogleTest case (and non-gtest test) in meson's JUnit log.

Exits 1 when anything failed or nothing ran, so the summary itself cannot hide a failure.
"""
import sys
import xml.etree.ElementTree as ET

path = sys.argv[1]
passed = failed = skipped = 0
failures = []
for suite in ET.parse(path).getroot().iter("testsuite"):
    for case in suite.iter("testcase"):
        name = f"{suite.get('name')}.{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
            failures.append(name + " (skipped)")
        else:
            passed += 1
for f in failures:
    print(f"  not passed: {f}")
# A skip counts as a failure: integration tests must never skip.
print(f"{passed} passed, {failed + skipped} failed")
sys.exit(0 if failed + skipped == 0 and passed > 0 else 1)
