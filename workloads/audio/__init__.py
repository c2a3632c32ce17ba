"""workloads/audio"""
