"""The OpenAI-compatible captioner, spoken to over real HTTP (tests/chat_server.py)."""

from __future__ import annotations

import re
import socket
import time

import numpy as np
import pytest

from tests.chat_server import ChatServer, Fault
from longvideo_r1.corpus import captioning, tree, video
from longvideo_r1.corpus.captioners import CaptionRequest, make_captioner
from longvideo_r1.corpus.captioners.openai_api import OpenAICaptioner
from longvideo_r1.errors import InputError

MODEL = "test-vlm"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def make_request(i: int = 0, n: int = 3, colour=(200, 30, 60), level: str = "low",
                 subtitles: list[list[str]] | None = None) -> CaptionRequest:
    frames = np.empty((n, 24, 32, 3), np.uint8)
    frames[:] = colour
    return CaptionRequest("clip", level, (1, 2, 3), frames, [round(10.0 * i + 1.5 * k, 1) for k in range(n)],
                          subtitles or [[] for _ in range(n)], word_budget=tree.WORD_BUDGET[level])


def captioner(srv_or_url, **options) -> OpenAICaptioner:
    url = srv_or_url if isinstance(srv_or_url, str) else srv_or_url.base_url
    return OpenAICaptioner(url, MODEL, **options)


def caption_all(cap: OpenAICaptioner, requests) -> list[str]:
    return list(cap.caption_many(requests))


# ---------------------------------------------------------------- what arrives

def test_frames_arrive_as_jpegs_with_their_times_and_subtitles_in_order():
    req = make_request(n=3, subtitles=[[], ["Hello there", "General"], []])
    req.frames[1] = (20, 220, 40)
    with ChatServer() as srv:
        caption_all(captioner(srv), [req])
    (got,) = srv.requests
    assert got.model == MODEL
    assert [m["role"] for m in got.messages] == ["system", "user"]
    kinds = [kind for kind, _ in got.parts]
    assert kinds == ["text", "image"] * 3
    assert got.texts == ["0.0s.", "1.5s. Subtitle: Hello there,General.", "3.0s."]
    assert [img.shape for img in got.images] == [(24, 32, 3)] * 3
    for img, want in zip(got.images, [(200, 30, 60), (20, 220, 40), (200, 30, 60)]):
        assert np.abs(img.reshape(-1, 3).mean(axis=0) - want).max() < 6
    assert got.payload["max_tokens"] == 1024 and got.payload["temperature"] == 0.0


def test_system_prompt_states_the_word_budget_and_the_caption_wrapper():
    with ChatServer() as srv:
        caption_all(captioner(srv), [make_request(level="high"), make_request(level="low")])
    high, low = sorted((r.system for r in srv.requests), key=lambda s: "overview" not in s)
    assert "400 words" in high and "overview" in high
    assert "200 words" in low and "detail" in low
    assert all("<caption>" in s and "</caption>" in s for s in (high, low))


def test_system_prompt_asks_per_level_for_times_events_people_objects_text_and_low_setting():
    with ChatServer() as srv:
        caption_all(captioner(srv), [make_request(level=level, n=2) for level in ("high", "medium", "low")])
    prompts = {r.system.split("one ")[1].split("-level")[0]: r.system for r in srv.requests}
    assert set(prompts) == {"high", "medium", "low"}
    for level, prompt in prompts.items():
        assert f"{tree.WORD_BUDGET[level]} words" in prompt and "2 frames" in prompt
        for asked in ("frame times in seconds", "what happens", "the people", "objects", "on-screen text"):
            assert asked in prompt, (level, asked)
    for setting in ("the setting", "lighting", "weather"):
        assert setting in prompts["low"]
        assert setting not in prompts["high"] and setting not in prompts["medium"]
    assert "{" not in "".join(prompts.values())


def test_a_custom_system_prompt_gets_its_placeholders_filled():
    with ChatServer() as srv:
        caption_all(captioner(srv, system_prompt="Describe {num_frames} frames of the {level} level in "
                                                "{word_budget} words. JSON braces {} stay."), [make_request(n=2)])
    assert srv.requests[0].system == "Describe 2 frames of the low level in 200 words. JSON braces {} stay."


# ---------------------------------------------------------------- what comes back

def test_captions_come_back_in_input_order_without_caption_tags():
    def slow_for_early_segments(request):
        # Earlier segments answer later, so answers complete out of input order.
        t0 = float(request.texts[0].split("s.")[0])
        time.sleep(max(0.0, 0.3 - t0 / 300))
        return f"<caption>segment from {t0}s</caption>\n"

    with ChatServer(handler=slow_for_early_segments) as srv:
        captions = caption_all(captioner(srv, concurrency=4), [make_request(i, n=2) for i in range(8)])
    assert captions == [f"segment from {10.0 * i}s" for i in range(8)]
    finish_order = [r.texts[0] for r in sorted(srv.requests, key=lambda r: r.finished)]
    assert finish_order != sorted(finish_order, key=lambda t: float(t[:-2]))


def test_concurrency_never_exceeds_the_bound_but_does_overlap():
    with ChatServer(delay=0.15) as srv:
        captions = caption_all(captioner(srv, concurrency=3), [make_request(i) for i in range(12)])
    assert len(captions) == 12
    assert srv.max_in_flight <= 3
    assert srv.max_in_flight > 1


def test_requests_are_pulled_lazily_so_few_segments_are_held_at_once():
    held = []
    consumed = 0

    def requests():
        for i in range(10):
            held.append(i + 1 - consumed)  # requests produced (this one included) minus captions handed out
            yield make_request(i)

    with ChatServer(delay=0.05) as srv:
        for _ in captioner(srv, concurrency=2).caption_many(requests()):
            consumed += 1
    assert consumed == 10
    assert max(held) <= 2


def test_stopping_early_pulls_no_further_requests():
    pulled = []

    def requests():
        for i in range(50):
            pulled.append(i)
            yield make_request(i)

    with ChatServer() as srv:
        stream = captioner(srv, concurrency=3).caption_many(requests())
        next(stream)
        stream.close()
    assert len(pulled) <= 4


def test_an_error_mid_stream_cancels_the_requests_in_flight_and_their_retries():
    with ChatServer(faults=lambda i: Fault(status=503)) as srv:
        def requests():
            for i in range(3):
                yield make_request(i)
            deadline = time.monotonic() + 5
            while len(srv.requests) < 3 and time.monotonic() < deadline:  # all three are being retried
                time.sleep(0.01)
            raise InputError("video clip: frame 9 cannot be decoded")

        with pytest.raises(InputError, match="cannot be decoded"):
            caption_all(captioner(srv, concurrency=4, retries=5), requests())
        seen = len(srv.requests)
        time.sleep(1.5)  # left running, each request would have been retried twice by now
    assert seen == 3 and len(srv.requests) == 3


# ---------------------------------------------------------------- failures

def test_a_transient_500_is_retried_and_succeeds():
    with ChatServer(faults=[Fault(status=500), Fault(status=503)]) as srv:
        (caption,) = caption_all(captioner(srv, retries=3), [make_request()])
    assert caption.startswith("3 frames from 0.0s")
    assert [r.status for r in srv.requests] == [500, 503, 200]


def test_a_429_is_retried_after_the_time_the_server_asks_for():
    with ChatServer(faults=[Fault(status=429, retry_after="1")]) as srv:
        (caption,) = caption_all(captioner(srv, retries=2), [make_request()])
    first, second = srv.requests
    assert (first.status, second.status) == (429, 200)
    assert second.started - first.finished >= 0.9
    assert caption.startswith("3 frames")


def test_a_persistent_500_raises_input_error_naming_endpoint_video_and_segment():
    with ChatServer(faults=lambda i: Fault(status=500)) as srv:
        with pytest.raises(InputError) as err:
            caption_all(captioner(srv, retries=2), [make_request()])
    message = str(err.value)
    assert len(srv.requests) == 3  # the first try and two retries
    assert srv.base_url in message and "clip" in message and "(1, 2, 3)" in message
    assert "500" in message and "3 attempt" in message and MODEL in message
    assert "\n" not in message


def test_a_400_is_not_retried_and_its_message_is_reported():
    with ChatServer(faults=[Fault(status=400)]) as srv:
        with pytest.raises(InputError, match="HTTP 400: injected fault 400"):
            caption_all(captioner(srv, retries=3), [make_request()])
    assert len(srv.requests) == 1


def test_an_unknown_model_is_not_retried():
    with ChatServer(models=["some-other-model"]) as srv:
        with pytest.raises(InputError, match="HTTP 404: The model `test-vlm` does not exist"):
            caption_all(captioner(srv, retries=3), [make_request()])
    assert len(srv.requests) == 1


def test_a_client_timeout_is_retried_and_can_succeed():
    with ChatServer(faults=[Fault(delay=3.0)]) as srv:
        (caption,) = caption_all(captioner(srv, timeout=0.3, retries=2), [make_request()])
    assert len(srv.requests) == 2 and caption.startswith("3 frames")


def test_a_persistent_timeout_is_reported_after_the_retries():
    with ChatServer(delay=3.0) as srv:
        start = time.monotonic()
        with pytest.raises(InputError, match=r"timed out.*is running") as err:
            caption_all(captioner(srv, timeout=0.3, retries=1), [make_request()])
        elapsed = time.monotonic() - start
    assert len(srv.requests) == 2
    assert elapsed < 2.5
    assert srv.base_url in str(err.value)


def test_a_server_that_is_not_there_is_retried_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InputError, match=rf"127\.0\.0\.1:{port}/v1.*2 attempt.*connection failed"):
        caption_all(captioner(f"http://127.0.0.1:{port}", retries=1), [make_request()])


def test_malformed_json_gives_a_clear_error_without_retrying():
    with ChatServer(faults=[Fault(body=b'{"id": "chatcmpl-1", "choices": [')]) as srv:
        with pytest.raises(InputError, match="not valid JSON.*OpenAI chat-completions"):
            caption_all(captioner(srv, retries=3), [make_request()])
    assert len(srv.requests) == 1


def test_a_response_without_message_content_gives_a_clear_error():
    with ChatServer(faults=[Fault(body=b'{"object": "chat.completion", "choices": []}')]) as srv:
        with pytest.raises(InputError, match=re.escape("no choices[0].message.content")):
            caption_all(captioner(srv), [make_request()])


# ---------------------------------------------------------------- the endpoint and the key

@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/chat/completions"])
def test_the_endpoint_is_accepted_with_or_without_v1(suffix):
    with ChatServer() as srv:
        root = srv.base_url[: -len("/v1")]
        (caption,) = caption_all(captioner(root + suffix), [make_request()])
    assert caption.startswith("3 frames") and srv.requests[0].path == "/v1/chat/completions"


def test_the_api_key_is_sent_as_a_bearer_token():
    with ChatServer(api_key="sk-test-123") as srv:
        caption_all(captioner(srv, api_key="sk-test-123"), [make_request()])
    assert srv.requests[0].headers["Authorization"] == "Bearer sk-test-123"


def test_the_api_key_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with ChatServer(api_key="sk-from-env") as srv:
        caption_all(captioner(srv), [make_request()])
    assert srv.requests[0].headers["Authorization"] == "Bearer sk-from-env"


def test_no_authorization_header_without_a_key():
    with ChatServer() as srv:
        caption_all(captioner(srv), [make_request()])
    assert "Authorization" not in srv.requests[0].headers


def test_a_rejected_key_is_not_retried_and_never_shown():
    with ChatServer(api_key="sk-right") as srv:
        cap = captioner(srv, api_key="sk-wrong-secret", retries=3)
        with pytest.raises(InputError, match="HTTP 401") as err:
            caption_all(cap, [make_request()])
    assert len(srv.requests) == 1
    assert "sk-wrong-secret" not in str(err.value) and "sk-wrong-secret" not in repr(cap)


def test_make_captioner_builds_the_openai_backend():
    cap = make_captioner("openai", endpoint="http://127.0.0.1:9/v1", model=MODEL, concurrency=2)
    assert isinstance(cap, OpenAICaptioner) and cap.name == "openai" and cap.concurrency == 2


# ---------------------------------------------------------------- a real video, end to end

def write_video(path, seconds: int = 20, fps: int = 4):
    """A 64x48 H.264 clip whose red channel rises with the frame index (red = 3·i)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[..., 0], frame[..., 1], frame[..., 2] = 3 * i, 100, 255 - 3 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_real_video_is_captioned_level_by_level_through_the_server(tmp_path):
    path = tmp_path / "street.mp4"
    write_video(path)
    video.write_srt(tmp_path / "street.srt", [video.Subtitle(2.0, 5.0, "Mind the gap")])
    info = video.probe_video(path)
    assert (info.num_frames, info.width) == (80, 4)
    per_level = {"high": 8, "medium": 4, "low": 2}
    with ChatServer() as srv:
        records = captioning.caption_video(info, captioner(srv, concurrency=4), frames_per_level=per_level)
    assert [sum(r.level == lvl for r in records) for lvl in tree.LEVELS] == [4, 16, 64]
    assert len(srv.requests) == 84 and srv.max_in_flight <= 4
    pattern = re.compile(r"(\d+) frames from ([\d.]+)s to ([\d.]+)s; mean colour (\d+),(\d+),(\d+); subtitles: (.*)")
    for record in records:
        n, t0, t1, red, _, _, subs = pattern.fullmatch(record.caption).groups()
        assert int(n) == per_level[record.level]
        assert (float(t0), float(t1)) == (record.frame_time[0], record.frame_time[-1])
        assert abs(int(red) - 3 * np.mean(record.frame_ids)) < 8  # the right frames were sent
        shows_subtitle = any(2.0 <= t <= 5.0 for t in record.frame_time)
        assert (subs == "Mind the gap") == shows_subtitle
    # Longest side per level follows tree.MAX_SIDE, which never enlarges a 64x48 video.
    assert {img.shape for r in srv.requests for img in r.images} == {(48, 64, 3)}
