"""Text plumbing for the extractive generator: words, stopwords, sentences with their times.

Language-agnostic where it can be (Unicode word characters); the stopword list is English,
which is what the offline model transcribes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.metadata.model import TimedText

_APOSTROPHES = "'\u2019"
_WORD = re.compile(rf"[^\W_]+(?:[{_APOSTROPHES}][^\W_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_SPACES = re.compile(r"\s+")

STOPWORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and another
    any anybody anyone anything anyway anywhere are aren't around as at away back be because
    been before being below between both but by can can't cannot could couldn't did didn't do
    does doesn't doing don't done down during each either else enough even ever every
    everybody everyone everything few first following for from further get gets getting give
    given go goes going gone gonna got gotta had hadn't has hasn't have haven't having he he'd
    he'll he's her here here's hereby hers herself him himself his how how's however i i'd
    i'll i'm i've if in including into is isn't it it's its itself just kind know last less
    let let's like likely lot lots made make makes making many may maybe me might mine more
    most much must mustn't my myself need needs never new next no nobody none nor not nothing
    now of off often oh ok okay on once one ones only onto or other others otherwise ought our
    ours ourselves out over own per perhaps please pretty quite rather really right said same
    say saying says see seem seemed seems shall shan't she she'd she'll she's should shouldn't
    since so some somebody someone something sometimes somewhat still stuff such sure take
    than that that's the their theirs them themselves then there there's therefore these they
    they'd they'll they're they've thing things think this those though through thus to today
    together too toward towards uh um under until up upon us use used using very via want
    wanna was wasn't way we we'd we'll we're we've well went were weren't what what's whatever
    when when's where where's whether which while who who's whole whom whose why why's will
    with within without won't would wouldn't yeah yes yet you you'd you'll you're you've your
    yours yourself yourselves
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


#: Content words that say nothing on their own: numbers, and the adverbs and verbs a talk is full
#: of. A tag or a one-word title is never one of them; inside a longer phrase they may stand.
GENERIC = frozenset(
    """
    actually anyhow basically certainly clearly completely definitely especially exactly
    finally generally honestly hopefully inside instead literally mainly mostly nearly normally
    obviously outside particularly possibly probably quickly rarely recently seriously simply
    slowly somehow suddenly totally truly typically usually
    zero two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty
    hundred hundreds thousand thousands million millions billion second third
    ask asks asked keep keeps kept come comes came put puts look looks looked find finds found
    tell tells told
    call calls called try tries tried start starts started happen happens happened mean means
    meant talk talks talked show shows showed turn turns turned begin began help helps helped
    become becomes became bring brings brought move moves moved allow allows allowed
    people person time times year years day days part parts bit example point fact case
    place week weeks minute minutes hour hours everybody matter
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


def is_searchable(phrase: str) -> bool:
    """A phrase a person would search for: content words only, not made of generic ones."""
    parts = words(phrase)
    return (
        bool(parts) and all(is_content(w) for w in parts) and not all(w in GENERIC for w in parts)
    )


def words(text: str) -> list[str]:
    """Lower-case word tokens (apostrophes kept inside words)."""
    return [w.replace("\u2019", "'") for w in _WORD.findall(text.lower())]


def is_content(word: str) -> bool:
    return word not in STOPWORDS and len(word) > 2 and not word.isdigit()


def stem(word: str) -> str:
    """A deliberately light stemmer, enough to merge plurals and possessives."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class Sentence:
    index: int
    start: float
    end: float
    text: str
    #: The transcript segments it has words from (their ids), in order.
    segment_ids: tuple[int, ...] = ()


def sentences(segments: tuple[TimedText, ...]) -> list[Sentence]:
    """The transcript as sentences, each with the start of the segment it begins in and the end
    of the one it ends in. Unpunctuated transcripts fall back to one sentence per segment."""
    if not any(_SENTENCE_END.search(s.text.strip() + " ") for s in segments):
        return [
            Sentence(i, s.start, s.end, clean(s.text), (s.id,))
            for i, s in enumerate(x for x in segments if clean(x.text))
        ]
    found: list[Sentence] = []
    pending: list[str] = []
    ids: list[int] = []
    pending_start = 0.0
    for segment in segments:
        pieces = _SENTENCE_END.split(clean(segment.text) + " ")
        for position, piece in enumerate(pieces):
            piece = piece.strip()
            closes = position < len(pieces) - 1
            if piece:
                if not pending:
                    pending_start = segment.start
                pending.append(piece)
                if not ids or ids[-1] != segment.id:
                    ids.append(segment.id)
            if closes and pending:
                found.append(
                    Sentence(len(found), pending_start, segment.end, " ".join(pending), tuple(ids))
                )
                pending, ids = [], []
    if pending:
        end = segments[-1].end if segments else pending_start
        found.append(Sentence(len(found), pending_start, end, " ".join(pending), tuple(ids)))
    return found


def clock(seconds: float) -> str:
    """ "1:02:03" or "02:03", as chapter lists write times."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def title_case(phrase: str) -> str:
    small = {"a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to"}
    parts = phrase.split()
    return " ".join(
        p if p.isupper() and len(p) > 1 else (p if i and p in small else p[:1].upper() + p[1:])
        for i, p in enumerate(parts)
    )
