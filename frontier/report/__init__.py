"""frontier.report"""
