"""Runs queued jobs forever."""
import time

from . import storage


def main():
    while True:
        for job in storage.load():
            job()
        time.sleep(1)
