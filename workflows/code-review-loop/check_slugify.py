"""The tests of the code-review-loop example: the proposed `slugify` on fixed cases.

    python check_slugify.py "<the Python source of slugify>"

Prints one line per case and exits 1 when any fails. It runs the code it is given: the
example's loop hands it what the model wrote, as a test suite runs what a person wrote.
"""

from __future__ import annotations

import sys

CASES = [
    ("Hello World", "hello-world"),
    ("  Loops, done right!  ", "loops-done-right"),
    ("a--b__c", "a-b-c"),
    ("Already-a-slug", "already-a-slug"),
    ("", ""),
]


def main(source: str) -> int:
    namespace: dict[str, object] = {}
    try:
        exec(source, namespace)  # running the proposal is the point
    except Exception as error:
        print(f"ERROR the code does not run: {type(error).__name__}: {error}")
        return 1
    slugify = namespace.get("slugify")
    if not callable(slugify):
        print("ERROR the code defines no function slugify")
        return 1
    failed = 0
    for text, expected in CASES:
        try:
            got = slugify(text)
        except Exception as error:
            got = f"<{type(error).__name__}: {error}>"
        if got == expected:
            print(f"ok   slugify({text!r}) == {expected!r}")
        else:
            failed += 1
            print(f"FAIL slugify({text!r}) == {got!r}, expected {expected!r}")
    print(f"{len(CASES) - failed} of {len(CASES)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
