"""frontier.eval"""
