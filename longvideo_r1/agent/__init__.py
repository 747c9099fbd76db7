"""The agent room: the navigation protocol, the episode rules, the tools and the navigators.

``protocol`` (prompts, observation strings, the action grammar) and ``episode`` (the rules of a
navigation episode) are pure Python. ``tools`` serve get_caption from the caption store and
video_qa from a vision-language endpoint or an offline backend; ``policies`` hold the navigators
(an LLM and the baselines). This room imports ``corpus`` and nothing above it.
"""
