"""Fakes of the outside world for the test suite: real servers on loopback, not mocks."""
