"""Pickles the job list to jobs.pkl."""
import pickle


def save(jobs):
    with open('jobs.pkl', 'wb') as f:
        pickle.dump(jobs, f)


def load():
    with open('jobs.pkl', 'rb') as f:
        return pickle.load(f)
