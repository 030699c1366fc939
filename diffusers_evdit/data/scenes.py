"""The scene vocabulary (colours, shapes, motions, backgrounds), scene specs and their captions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping

# ---------------------------------------------------------------------------
# Vocabulary of attributes (immutable)
# ---------------------------------------------------------------------------

#: Object colours (RGB uint8). Pairwise Chebyshev (max-channel) distance is
#: >= 130 and the distance to every background is >= 80, so colours are
#: unambiguous and objects are easy to segment from the background.
COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 190, 60),
        "blue": (40, 80, 230),
        "yellow": (240, 220, 40),
        "magenta": (210, 50, 210),
        "cyan": (40, 210, 220),
    }
)

#: Solid background colours (RGB uint8).
BACKGROUNDS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "dark": (16, 16, 16),
        "gray": (128, 128, 128),
        "light": (236, 236, 236),
    }
)

#: Object shapes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Motion labels used in captions.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "bouncing")

#: Unit direction vectors (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
)

#: (colour, shape, motion) triples excluded from the training split. Each
#: colour and each motion occurs twice, each shape four times.
HELDOUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "up"),
    ("red", "square", "bouncing"),
    ("green", "circle", "left"),
    ("green", "triangle", "still"),
    ("blue", "square", "down"),
    ("blue", "circle", "right"),
    ("yellow", "triangle", "bouncing"),
    ("yellow", "square", "left"),
    ("magenta", "circle", "up"),
    ("magenta", "triangle", "right"),
    ("cyan", "square", "still"),
    ("cyan", "circle", "down"),
)
_HELDOUT_SET = frozenset(HELDOUT_COMBOS)

#: Default clip: 29 frames -> 8 latent frames with 4x temporal VAE compression;
#: 128x128 pixels -> 8x8 = 64 tokens per latent frame with 8x spatial
#: compression and patch size 2.
DEFAULT_NUM_FRAMES = 29
DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 128

_MOTION_PHRASES: Mapping[str, str] = MappingProxyType(
    {
        "left": "moving left",
        "right": "moving right",
        "up": "moving up",
        "down": "moving down",
        "still": "standing still",
        "bouncing": "bouncing",
    }
)
_PHRASE_TO_MOTION: Mapping[str, str] = MappingProxyType({v: k for k, v in _MOTION_PHRASES.items()})


# ---------------------------------------------------------------------------
# Dataclasses
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectAttributes:
    """The captioned attributes of one object (what a caption can express).

    Example:
        >>> parse_caption("a red circle moving right on a dark background").objects[0]
        ObjectAttributes(color='red', shape='circle', motion='right')
    """

    color: str
    shape: str
    motion: str


@dataclass(frozen=True)
class CaptionAttributes:
    """The attributes a caption expresses: objects (in caption order) and background.

    Example:
        >>> attrs = parse_caption("a red circle moving right and a blue square bouncing on a light background")
        >>> len(attrs.objects), attrs.background, caption(attrs)
        (2, 'light', 'a red circle moving right and a blue square bouncing on a light background')
    """

    objects: tuple[ObjectAttributes, ...]
    background: str


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: key of :data:`COLORS`.
        motion: one of :data:`MOTIONS`.
        x: initial centre, fraction of the width.
        y: initial centre, fraction of the height.
        size: half-extent as a fraction of ``min(height, width)``.
        speed: displacement over the whole clip as a fraction of the frame
            extent along the motion axis (0 for ``"still"``).
        heading: initial direction of travel (``"left"``, ``"right"``, ``"up"``,
            ``"down"``); equal to ``motion`` for linear motions, the initial
            direction for ``"bouncing"``, ``None`` for ``"still"``.

    Example:
        >>> obj = ObjectSpec(shape="circle", color="red", motion="right", x=0.3, y=0.5, size=0.1, speed=0.4)
        >>> SceneSpec(objects=(obj,), background="dark").caption()
        'a red circle moving right on a dark background'
    """

    shape: str
    color: str
    motion: str
    x: float
    y: float
    size: float
    speed: float = 0.0
    heading: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; expected one of {MOTIONS}")
        if self.heading is not None and self.heading not in DIRECTIONS:
            raise ValueError(f"unknown heading {self.heading!r}")
        if self.motion in DIRECTIONS and self.heading not in (None, self.motion):
            raise ValueError("for linear motions heading must equal motion")
        if self.motion == "bouncing" and self.heading is None:
            raise ValueError("a bouncing object needs a heading")

    @property
    def direction(self) -> tuple[int, int]:
        """Unit (dx, dy) of the initial heading, (0, 0) when still."""
        heading = self.motion if self.motion in DIRECTIONS else self.heading
        if self.motion == "still" or heading is None:
            return (0, 0)
        return DIRECTIONS[heading]

    def attributes(self) -> ObjectAttributes:
        """The captioned attributes of this object."""
        return ObjectAttributes(color=self.color, shape=self.shape, motion=self.motion)

    def pixels_per_frame(self, num_frames: int, height: int, width: int) -> float:
        """Speed in pixels per frame when rendered at the given clip size."""
        if num_frames < 2 or self.motion == "still":
            return 0.0
        dx, dy = self.direction
        extent = width if dx != 0 else height
        return self.speed * extent / (num_frames - 1)


@dataclass(frozen=True)
class SceneSpec:
    """A full description of a clip: objects (drawn in order) and a background.

    Example::

        >>> obj = ObjectSpec("circle", "red", "left", x=0.7, y=0.5, size=0.12, speed=0.4)
        >>> SceneSpec((obj,), "dark").caption()
        'a red circle moving left on a dark background'
    """

    objects: tuple[ObjectSpec, ...]
    background: str = "dark"

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {tuple(BACKGROUNDS)}")

    def caption(self) -> str:
        """The templated caption of the scene (see :func:`caption`)."""
        return caption(self)

    def attributes(self) -> CaptionAttributes:
        """The captioned attributes; equals ``parse_caption(self.caption())``."""
        return CaptionAttributes(tuple(o.attributes() for o in self.objects), self.background)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict form (inverse: :meth:`from_dict`)."""
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SceneSpec":
        """Build a scene from :meth:`to_dict` output."""
        return cls(tuple(ObjectSpec(**o) for o in d["objects"]), d["background"])

    @property
    def is_heldout(self) -> bool:
        """Whether any object has a held-out (colour, shape, motion) triple."""
        return is_heldout(self)


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


def _object_phrase(color: str, shape: str, motion: str) -> str:
    return f"a {color} {shape} {_MOTION_PHRASES[motion]}"


def caption(scene: SceneSpec | CaptionAttributes) -> str:
    """Templated caption of a scene.

    ``"a {colour} {shape} {motion phrase}[ and a ...] on a {background} background"``
    where the motion phrase is ``moving left|right|up|down``, ``standing still``
    or ``bouncing``.

    Example::

        >>> from diffusers_evdit.data import sample_scene
        >>> caption(sample_scene(3, num_objects=1)).startswith("a ")
        True
    """
    parts = [_object_phrase(o.color, o.shape, o.motion) for o in scene.objects]
    return " and ".join(parts) + f" on a {scene.background} background"


def parse_caption(text: str) -> CaptionAttributes:
    """Inverse of :func:`caption`: recover the captioned attributes.

    Case, surrounding whitespace and a trailing period are ignored. Raises
    ``ValueError`` for text that does not follow the template.

    Example::

        >>> parse_caption("a red circle moving left on a dark background")
        CaptionAttributes(objects=(ObjectAttributes(color='red', shape='circle', motion='left'),), background='dark')
    """
    s = " ".join(text.strip().lower().rstrip(".").split())
    head, sep, tail = s.rpartition(" on a ")
    if not sep or not tail.endswith(" background"):
        raise ValueError(f"caption does not match the template: {text!r}")
    background = tail[: -len(" background")]
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r} in caption {text!r}")
    objects = []
    for part in head.split(" and "):
        words = part.split()
        if len(words) < 4 or words[0] != "a":
            raise ValueError(f"cannot parse object phrase {part!r} in caption {text!r}")
        color, shape, phrase = words[1], words[2], " ".join(words[3:])
        if color not in COLORS or shape not in SHAPES or phrase not in _PHRASE_TO_MOTION:
            raise ValueError(f"cannot parse object phrase {part!r} in caption {text!r}")
        objects.append(ObjectAttributes(color=color, shape=shape, motion=_PHRASE_TO_MOTION[phrase]))
    return CaptionAttributes(tuple(objects), background)


def caption_vocabulary() -> list[str]:
    """Sorted list of every word any caption can contain.

    Enough to build a tiny word-level tokenizer.

    Example::

        >>> set("a red circle moving left on a dark background".split()) <= set(caption_vocabulary())
        True
    """
    words = {"a", "and", "on", "background"}
    words.update(COLORS)
    words.update(SHAPES)
    words.update(BACKGROUNDS)
    for phrase in _MOTION_PHRASES.values():
        words.update(phrase.split())
    return sorted(words)


def is_heldout(scene: SceneSpec | CaptionAttributes) -> bool:
    """True iff any object's (colour, shape, motion) is in :data:`HELDOUT_COMBOS`.

    Example:
        >>> from diffusers_evdit.data import sample_scene
        >>> is_heldout(sample_scene(0, split="heldout")), is_heldout(sample_scene(0, split="train"))
        (True, False)
    """
    return any((o.color, o.shape, o.motion) in _HELDOUT_SET for o in scene.objects)


