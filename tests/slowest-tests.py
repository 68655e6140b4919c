"""The slowest tests of a cargo-nextest run, from its JUnit report.

    python3 tests/slowest-tests.py target/nextest/ci/junit.xml [COUNT]

Prints COUNT (default 15) tests, slowest first, with their time in seconds and their binary,
then the number of tests and the sum of their times.
"""

import sys
import xml.etree.ElementTree as ElementTree


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    count = int(sys.argv[2]) if len(sys.argv) == 3 else 15
    cases = []
    for case in ElementTree.parse(sys.argv[1]).getroot().iter("testcase"):
        seconds = float(case.get("time", "0"))
        cases.append((seconds, case.get("classname", ""), case.get("name", "")))
    cases.sort(reverse=True)
    print(f"slowest {min(count, len(cases))} of {len(cases)} tests (s):")
    for seconds, binary, name in cases[:count]:
        print(f"{seconds:8.1f}  {binary} {name}")
    print(f"{sum(c[0] for c in cases):8.1f}  all {len(cases)} tests, one after another")
    return 0


if __name__ == "__main__":
    sys.exit(main())
