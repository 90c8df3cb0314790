from tinyq import enqueue


def test_enqueue():
    enqueue(print)
