"""bisenet_ros.codec: every supported encoding against OpenCV/rosbags.image, padding, endianness,
and the error cases the node must survive."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from rosbags.image import message_to_cvimage

from bisenet_ros.codec import (
    DECODABLE_ENCODINGS, CodecError, decode_compressed, decode_image, encode_image, image_to_array)
from ros_double.messages import typestore

RNG = np.random.default_rng(0)
H, W = 6, 10


def _image_msg(pixels: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False):
    """A real sensor_msgs/Image (typestore class) holding ``pixels`` with ``pad`` bytes per row."""
    store = typestore()
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return store.types["sensor_msgs/msg/Image"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"), height=pixels.shape[0],
        width=pixels.shape[1], encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1],
        data=rows.reshape(-1).copy())


def _compressed_msg(data: bytes, fmt: str = "jpeg"):
    store = typestore()
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return store.types["sensor_msgs/msg/CompressedImage"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"), format=fmt,
        data=np.frombuffer(data, np.uint8).copy())


BGR = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _source(encoding: str) -> np.ndarray:
    """Pixels in ``encoding``'s own layout."""
    if encoding in ("bgr8", "8UC3"):
        return BGR
    if encoding == "rgb8":
        return BGR[:, :, ::-1]
    if encoding in ("bgra8", "rgba8"):
        base = BGR if encoding == "bgra8" else BGR[:, :, ::-1]
        return np.dstack([base, np.full((H, W), 77, np.uint8)])
    if encoding in ("rgb16", "bgr16", "rgba16", "bgra16"):
        return RNG.integers(0, 65536, (H, W, 3 if len(encoding) == 5 else 4), dtype=np.uint16)
    if encoding in ("mono16", "16UC1") or encoding.endswith("16"):
        return RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        return RNG.integers(0, 256, (H, W, 2), dtype=np.uint8)
    return RNG.integers(0, 256, (H, W), dtype=np.uint8)  # mono8, 8UC1, bayer_*8


def _expected_bgr(encoding: str, src: np.ndarray) -> np.ndarray:
    """Independent expectation (direct NumPy/OpenCV), in BGR."""
    if encoding in ("bgr8", "8UC3"):
        return src
    if encoding == "rgb8":
        return src[:, :, ::-1]
    if encoding in ("bgra8",):
        return src[:, :, :3]
    if encoding == "rgba8":
        return src[:, :, 2::-1]
    if encoding in ("rgb16", "bgr16", "rgba16", "bgra16"):
        out = (src[:, :, :3] // 257).astype(np.uint8)
        return out[:, :, ::-1] if encoding.startswith("rgb") else out
    if encoding in ("mono8", "8UC1"):
        return np.repeat(src[:, :, None], 3, axis=2)
    if encoding in ("mono16", "16UC1"):
        return np.repeat((src // 257).astype(np.uint8)[:, :, None], 3, axis=2)
    if encoding in ("yuv422", "uyvy"):
        return cv2.cvtColor(src, cv2.COLOR_YUV2BGR_UYVY)
    if encoding in ("yuv422_yuy2", "yuyv"):
        return cv2.cvtColor(src, cv2.COLOR_YUV2BGR_YUY2)
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", [e for e in DECODABLE_ENCODINGS if not e.startswith("bayer")])
@pytest.mark.parametrize("pad", [0, 6], ids=["tight", "padded"])
def test_decode_every_encoding(encoding: str, pad: int) -> None:
    src = _source(encoding)
    frame, order = decode_image(_image_msg(src, encoding, pad=pad))
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    as_bgr = frame if order == "bgr" else frame[:, :, ::-1]
    np.testing.assert_array_equal(as_bgr, _expected_bgr(encoding, src))
    # rgb8/rgba8 are handed to the engine without a colour conversion
    assert order == ("rgb" if encoding.startswith("rgb") else "bgr")


@pytest.mark.parametrize("encoding", [
    "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "uyvy", "yuv422_yuy2",
    "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
    "bayer_rggb16", "bayer_bggr16", "bayer_gbrg16", "bayer_grbg16"])
@pytest.mark.parametrize("bigendian", [False, True], ids=["le", "be"])
def test_agrees_with_rosbags_image(encoding: str, bigendian: bool) -> None:
    # rosbags.image ignores row padding, so compare on tight rows; it honours is_bigendian.
    src = _source(encoding)
    msg = _image_msg(src, encoding, bigendian=bigendian)
    frame, order = decode_image(msg)
    reference = message_to_cvimage(msg, "bgr8")
    as_bgr = frame if order == "bgr" else frame[:, :, ::-1]
    # 16-bit -> 8-bit: rosbags multiplies by 255/65535 in floating point, we divide by 257 exactly.
    atol = 1 if encoding.endswith("16") else 0
    np.testing.assert_allclose(as_bgr.astype(int), reference.astype(int), atol=atol, rtol=0)


def test_bayer_patterns_recover_a_uniform_colour() -> None:
    # A flat colour mosaicked by hand must demosaic to itself, whatever the pattern: this pins
    # the OpenCV Bayer-name mapping (legacy names are shifted by one pixel).
    r, g, b = 200, 100, 30
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        plane = np.zeros((8, 8), np.uint8)
        colour = {"r": r, "g": g, "b": b}
        for i, ch in enumerate(pattern):
            plane[i // 2::2, i % 2::2] = colour[ch]
        for depth, scale in (("8", 1), ("16", 257)):
            src = plane.astype(np.uint16) * scale if depth == "16" else plane
            frame, order = decode_image(_image_msg(src, f"bayer_{pattern}{depth}", pad=4))
            assert order == "bgr"
            np.testing.assert_array_equal(frame[3:5, 3:5].reshape(-1, 3), [[b, g, r]] * 4)


def test_big_endian_mono16_is_not_misread() -> None:
    src = np.array([[0x0102, 0xFF00]], np.uint16)
    be = _image_msg(src, "mono16", bigendian=True)
    assert bytes(be.data[:2]) == b"\x01\x02"
    np.testing.assert_array_equal(image_to_array(be), src)
    np.testing.assert_array_equal(image_to_array(_image_msg(src, "mono16", pad=2)), src)
    assert decode_image(be)[0][0, 1, 0] == 0xFF00 // 257


def test_last_row_without_padding_is_accepted() -> None:
    msg = _image_msg(BGR, "bgr8", pad=4)
    msg.data = msg.data[:-4]
    np.testing.assert_array_equal(decode_image(msg)[0], BGR)


def test_accepts_bytes_array_and_list_data() -> None:
    import array

    msg = _image_msg(BGR, "bgr8")
    raw = msg.data.tobytes()
    for data in (raw, array.array("B", raw), list(raw)):
        msg.data = data
        np.testing.assert_array_equal(decode_image(msg)[0], BGR)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: setattr(m, "encoding", "bgr9"), "unsupported image encoding 'bgr9'"),
    (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
    (lambda m: setattr(m, "data", m.data[:-7]), "needs 180 data bytes, got 173"),
    (lambda m: setattr(m, "data", np.concatenate([m.data, m.data])), "needs 180 data bytes"),
    (lambda m: setattr(m, "step", 20), "step=20 is smaller than one row"),
    (lambda m: setattr(m, "height", 0), "empty size"),
    (lambda m: setattr(m, "encoding", "32FC1"), "cannot be segmented"),
])
def test_malformed_image_errors(mutate, match: str) -> None:
    msg = _image_msg(BGR, "bgr8")
    mutate(msg)
    with pytest.raises(CodecError, match=match):
        decode_image(msg)


def test_odd_width_yuv_and_odd_step_16bit_are_errors() -> None:
    with pytest.raises(CodecError, match="even width"):
        decode_image(_image_msg(RNG.integers(0, 256, (2, 3, 2), dtype=np.uint8), "yuv422"))
    with pytest.raises(CodecError, match="multiple of 2"):
        decode_image(_image_msg(RNG.integers(0, 9, (2, 3), dtype=np.uint16), "mono16", pad=1))
    assert issubclass(CodecError, ValueError)


def test_compressed_jpeg_png_and_grey() -> None:
    ok, jpeg = cv2.imencode(".jpg", BGR)
    msg = _compressed_msg(jpeg.tobytes(), "jpeg")
    frame, order = decode_compressed(msg)
    assert order == "bgr" and frame.shape == (H, W, 3)
    np.testing.assert_array_equal(frame, message_to_cvimage(msg, "bgr8"))
    ok, png = cv2.imencode(".png", BGR)
    np.testing.assert_array_equal(decode_compressed(_compressed_msg(png.tobytes(), "png"))[0], BGR)
    grey = BGR[:, :, 0]
    ok, png = cv2.imencode(".png", grey)
    np.testing.assert_array_equal(decode_compressed(_compressed_msg(png.tobytes(), "mono8; png"))[0],
                                  np.repeat(grey[:, :, None], 3, axis=2))
    deep = np.full((4, 4, 3), 65535, np.uint16)
    ok, png16 = cv2.imencode(".png", deep)
    assert decode_compressed(_compressed_msg(png16.tobytes(), "png"))[0].max() == 255


@pytest.mark.parametrize("data, fmt, match", [
    (b"", "jpeg", "has no data"),
    (b"\xff\xd8\xff\xe0garbage" * 3, "jpeg", "could not be decoded: corrupt"),
    (b"\x00" * 64, "png", "could not be decoded"),
    (b"\x00" * 64, "16UC1; compressedDepth png", "depth image"),
])
def test_corrupt_compressed_errors(data: bytes, fmt: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_compressed(_compressed_msg(data, fmt))


def test_truncated_jpeg_is_an_error_not_a_crash() -> None:
    ok, jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(CodecError):
        decode_compressed(_compressed_msg(jpeg.tobytes()[:20]))


@pytest.mark.parametrize("encoding, array", [
    ("mono8", RNG.integers(0, 256, (H, W), dtype=np.uint8)),
    ("bgr8", BGR),
    ("rgb8", BGR[:, :, ::-1]),
    ("32FC1", RNG.random((H, W), dtype=np.float32)),
])
def test_encode_round_trips_through_a_serialized_message(encoding: str, array: np.ndarray) -> None:
    store = typestore()
    fields = encode_image(array, encoding)
    assert fields["data"].dtype == np.uint8 and fields["data"].ndim == 1
    assert fields["step"] * fields["height"] == fields["data"].size
    assert fields["is_bigendian"] == int(sys.byteorder == "big")
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    msg = store.types["sensor_msgs/msg/Image"](header=Header(stamp=Time(sec=3, nanosec=4), frame_id="f"),
                                               **fields)
    wire = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
    back = store.deserialize_cdr(wire, "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(image_to_array(back), array)
    np.testing.assert_array_equal(message_to_cvimage(back), array)  # rosbags reads it too
    if encoding in ("bgr8", "rgb8"):
        frame, order = decode_image(back)
        assert order == encoding[:3]
        np.testing.assert_array_equal(frame, array)


@pytest.mark.parametrize("array, encoding, match", [
    (np.zeros((2, 2), np.uint8), "bgr8", "H x W x 3 uint8"),
    (np.zeros((2, 2, 3), np.float32), "bgr8", "dtype float32"),
    (np.zeros((2, 2), np.float64), "32FC1", "float32"),
    (np.zeros((2, 2), np.uint8), "mono16", "cannot encode 'mono16'"),
])
def test_encode_errors(array: np.ndarray, encoding: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        encode_image(array, encoding)


def test_encode_makes_non_contiguous_input_contiguous() -> None:
    fields = encode_image(BGR[:, ::2], "bgr8")
    assert fields["width"] == W // 2 and fields["step"] == 3 * (W // 2)
    np.testing.assert_array_equal(fields["data"].reshape(H, W // 2, 3), BGR[:, ::2])


@pytest.mark.parametrize("encoding", DECODABLE_ENCODINGS)
def test_every_encoding_rejects_truncated_data_and_short_step(encoding: str) -> None:
    msg = _image_msg(_source(encoding), encoding, pad=2)
    full = msg.data
    msg.data = full[:-(msg.step + 1)]  # a row and a byte missing
    with pytest.raises(CodecError, match=f"^{encoding} image {W}x{H} with step {msg.step} needs"):
        decode_image(msg)
    msg.data = full
    msg.step = msg.step - 4  # smaller than one row of pixels
    with pytest.raises(CodecError, match="smaller than one row"):
        decode_image(msg)
