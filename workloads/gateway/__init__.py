"""workloads/gateway"""
