"""frontier.optim"""
