"""workloads/translate"""
