"""livetranslate/testing"""
