"""frontier.train"""
