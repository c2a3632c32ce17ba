"""A pipeline's model cache: a volume the operator fills with one Job per missing model.

Each Job runs ``livetranslate model-cache pull``; the stage's pods mount the volume read-only and
run ``livetranslate model-cache wait`` as an initContainer. ``layout`` (paths, names, manifest) is
what the operator imports: it loads nothing heavier than pydantic.
"""
