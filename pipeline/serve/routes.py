"""What each URL of ``folkrnn serve`` answers: a path and its query in, a ``Response`` out.

Pages: ``/`` (the datasets), ``/browse?d=NAME&meter=..`` (search), ``/tune?d=NAME&n=488&key=D``
(a tune), ``/compose?meter=6/8&seed=..`` (a new tune). A tune's files take the same query as its
page: ``/tune.ogg``, ``/tune.mid``, ``/tune.abc`` and ``/compose.ogg``, ``/compose.mid``,
``/compose.abc``, ``/generated.abc`` (a composed tune as ``folkrnn generate`` prints it); a book's
PDF is ``/volume.pdf?d=NAME&v=1``.

Every input is checked here or in the layers below; what a user can fix (an unknown meter, a prime
the vocabulary cannot say) is a ``BadInput``/``UsageError`` the page shows, status 400.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from folkrnn.pipeline.serve import views
from folkrnn.pipeline.serve.library import BadInput, Dataset, NotFound, volume_pdf
from folkrnn.pipeline.serve.media import Media, MediaError
from folkrnn.pipeline.serve.session import Composer, parse_request
from folkrnn.pipeline.serve.tunes import KEY_CHOICES, KEY_LABELS, Tune, key_choice, printed, tune_of_row
from folkrnn.schemas.errors import UsageError

HTML = "text/html; charset=utf-8"
COMPOSE_KEY = "C"  # a composed tune is first shown as generated (in C), as folkrnn generate prints it


@dataclass
class Response:
    status: int = 200
    content_type: str = HTML
    body: bytes = b""
    file: str | None = None  # a file to send instead of body (audio: byte ranges are served)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class App:
    """What the pages are made from: the datasets, the media maker and the composer (if any)."""

    library: dict[str, Dataset]
    media: Media
    composer: Composer | None = None
    compose_problem: str | None = None  # why there is no composer

    @property
    def nav(self) -> tuple[list[str], bool]:
        return list(self.library), self.composer is not None

    def html(self, text: str, status: int = 200) -> Response:
        return Response(status, HTML, text.encode("utf-8"))

    def error(self, status: int, message: str) -> Response:
        return self.html(views.error_page(status, message, *self.nav), status)

    def route(self, path: str, query: Mapping[str, str]) -> Response:
        """The response to GET ``path`` with ``query`` (its last value of each name)."""
        handler = ROUTES.get(path)
        if handler is None:
            return self.error(404, f"no page at {path}")
        try:
            return handler(self, query)
        except (BadInput, UsageError) as err:
            return self.error(400, str(err))
        except NotFound as err:
            return self.error(404, str(err))


# --- pages -----------------------------------------------------------------------------------------
def home(app: App, query: Mapping[str, str]) -> Response:
    datasets = [(name, d.path, d.count) for name, d in app.library.items()]
    return app.html(views.home(datasets, app.composer.name if app.composer else None, app.compose_problem))


def style(app: App, query: Mapping[str, str]) -> Response:
    return Response(200, "text/css; charset=utf-8", views.STYLE.encode("utf-8"),
                    headers={"Cache-Control": "max-age=3600"})


def dataset_of(app: App, query: Mapping[str, str]) -> Dataset:
    name = query.get("d", "")
    if name not in app.library:
        known = ", ".join(app.library) or "none"
        raise NotFound(f"no dataset named {name[:60]!r} is served (served: {known})")
    return app.library[name]


def page_number(query: Mapping[str, str]) -> int:
    text = query.get("page", "").strip() or "1"
    if not text.isdigit() or len(text) > 9:
        raise BadInput(f"page takes a page number, not {text[:40]!r}")
    return int(text)


def browse(app: App, query: Mapping[str, str]) -> Response:
    dataset = dataset_of(app, query)
    from folkrnn.pipeline.serve.library import PAGE_SIZE

    number = 1
    try:
        number = page_number(query)
        rows, total = dataset.search(query, number)
    except BadInput as err:  # the form stays, with the message under it
        text = views.browse(dataset.name, dataset.path, dataset.filters, dataset.choices, query, [], 0, number,
                            PAGE_SIZE, dataset.key_column, *app.nav, error=str(err))
        return app.html(text, 400)
    text = views.browse(dataset.name, dataset.path, dataset.filters, dataset.choices, query, rows.to_pylist(), total,
                        number, PAGE_SIZE, dataset.key_column, *app.nav)
    return app.html(text)


def dataset_tune(app: App, query: Mapping[str, str]) -> tuple[Dataset, object, Tune]:
    dataset = dataset_of(app, query)
    text = query.get("n" if dataset.key_column == "number" else "id", "")
    key = dataset.key_of(text)
    return dataset, key, tune_of_row(dataset.row(key), key_choice(query.get("key")))


def tune_params(dataset: Dataset, key: object, choice: str | None = None) -> dict[str, object]:
    return {"d": dataset.name, ("n" if dataset.key_column == "number" else "id"): key, "key": choice}


def tune_section(app: App, tune: Tune, files: dict[str, str], key_form: str) -> str:
    try:
        notation, problem = app.media.notation(tune.abc), None
    except MediaError as err:
        notation, problem = None, str(err)
    return views.tune_section(tune, notation, problem, files, app.media.audio_missing(), app.media.midi_missing(),
                              key_form)


def tune_page(app: App, query: Mapping[str, str]) -> Response:
    dataset, key, tune = dataset_tune(app, query)
    params = tune_params(dataset, key, tune.key_choice)
    files = {kind: views.url(f"/tune.{suffix}", params) for kind, suffix in
             (("audio", "ogg"), ("midi", "mid"), ("abc", "abc"))}
    volume, page = dataset.listing_value(key, "volume"), dataset.listing_value(key, "page")
    if volume is not None and volume_pdf(dataset, volume):
        files["pdf"] = views.url("/volume.pdf", {"d": dataset.name, "v": volume}) + (f"#page={page}" if page else "")
    key_form = views.key_form("/tune", params, KEY_CHOICES, KEY_LABELS, tune.key_choice)
    before, after = dataset.neighbours(key)

    def link(neighbour: object) -> str | None:
        return None if neighbour is None else views.url("/tune", tune_params(dataset, neighbour, query.get("key")))

    section = tune_section(app, tune, files, key_form)
    return app.html(views.tune_page(dataset.name, section, link(before), link(after),
                                    views.url("/browse", {"d": dataset.name}), *app.nav, title=tune.title))


def composer_of(app: App) -> Composer:
    if app.composer is None:
        raise NotFound(f"composing is off: {app.compose_problem or 'no model was loaded'}")
    return app.composer


def compose(app: App, query: Mapping[str, str]) -> Response:
    composer = composer_of(app)
    values = dict(query)
    if not values.get("seed"):  # a new seed for each visit, as folkrnn.org; the URL keeps it
        values["seed"] = str(random.randrange(1_000_000))
    status, result, error, notes, command = 200, "", None, [], ""
    try:
        request = parse_request(values)
        well_formed = request.well_formed
    except UsageError as err:
        well_formed = values.get("well_formed") == "on" or "compose" not in values
        return app.html(views.compose(values, well_formed, composer.name, error=str(err), datasets=list(app.library)),
                        400)
    if "compose" in query:
        try:
            composed = composer.compose(request)
        except UsageError as err:
            status, error = 400, str(err)
        else:
            choice = key_choice(query.get("key"), COMPOSE_KEY)
            tune = printed(request.number, None, composed.tokens, composed.truncated, choice)
            params = {**{k: v for k, v in values.items() if k != "key"}, "key": choice}
            files = {kind: views.url(f"/compose.{suffix}", params) for kind, suffix in
                     (("audio", "ogg"), ("midi", "mid"), ("abc", "abc"))}
            files["generated"] = views.url("/generated.abc", params)
            key_form = views.key_form("/compose", params, KEY_CHOICES, KEY_LABELS, choice)
            result, notes, command = tune_section(app, tune, files, key_form), composed.notes, \
                composer.command_line(request)
    text = views.compose(values, well_formed, composer.name, result, error, notes, command, list(app.library))
    return app.html(text, status)


# --- files -----------------------------------------------------------------------------------------
def composed_tune(app: App, query: Mapping[str, str]) -> tuple[Tune, str]:
    """(the tune as printed in the key asked for, its ABC as generated) of a compose URL."""
    composer = composer_of(app)
    request = parse_request(query)
    composed = composer.compose(request)
    tune = printed(request.number, None, composed.tokens, composed.truncated, key_choice(query.get("key"), COMPOSE_KEY))
    return tune, composed.abc


def abc_file(tune: Tune, name: str) -> Response:
    text = "%abc-2.1\n\n" + tune.abc
    return Response(200, "text/vnd.abc; charset=utf-8", text.encode("utf-8"),
                    headers={"Content-Disposition": f'attachment; filename="{name}.abc"'})


def media_file(app: App, tune: Tune, kind: str, name: str) -> Response:
    try:
        if kind == "ogg":
            return Response(200, "audio/ogg", file=app.media.audio(tune.abc, tune.number))
        return Response(200, "audio/midi", file=app.media.midi(tune.abc, tune.number),
                        headers={"Content-Disposition": f'attachment; filename="{name}.mid"'})
    except MediaError as err:
        what = "audio" if kind == "ogg" else "MIDI file"
        return app.error(500, f"cannot make the {what} of tune {tune.number}: {err}")


def file_name(tune: Tune) -> str:
    return f"tune-{tune.number}-{tune.key}"


def tune_file(kind: str) -> Callable[[App, Mapping[str, str]], Response]:
    def answer(app: App, query: Mapping[str, str]) -> Response:
        _, _, tune = dataset_tune(app, query)
        return abc_file(tune, file_name(tune)) if kind == "abc" else media_file(app, tune, kind, file_name(tune))

    return answer


def compose_file(kind: str) -> Callable[[App, Mapping[str, str]], Response]:
    def answer(app: App, query: Mapping[str, str]) -> Response:
        tune, generated = composed_tune(app, query)
        if kind == "generated":
            return Response(200, "text/vnd.abc; charset=utf-8", generated.encode("utf-8"),
                            headers={"Content-Disposition": f'attachment; filename="tune-{tune.number}.abc"'})
        name = "composed-" + file_name(tune)
        return abc_file(tune, name) if kind == "abc" else media_file(app, tune, kind, name)

    return answer


def volume_file(app: App, query: Mapping[str, str]) -> Response:
    dataset = dataset_of(app, query)
    text = query.get("v", "")
    if not text.isdigit() or len(text) > 6:
        raise BadInput(f"v takes a volume number, not {text[:40]!r}")
    pdf = volume_pdf(dataset, int(text))
    if pdf is None:
        raise NotFound(f"{dataset.name} has no PDF of volume {text} (compile without --no-pdf makes it)")
    return Response(200, "application/pdf", file=pdf)


ROUTES: dict[str, Callable[[App, Mapping[str, str]], Response]] = {
    "/": home,
    "/style.css": style,
    "/browse": browse,
    "/tune": tune_page,
    "/tune.abc": tune_file("abc"),
    "/tune.mid": tune_file("mid"),
    "/tune.ogg": tune_file("ogg"),
    "/compose": compose,
    "/compose.abc": compose_file("abc"),
    "/compose.mid": compose_file("mid"),
    "/compose.ogg": compose_file("ogg"),
    "/generated.abc": compose_file("generated"),
    "/volume.pdf": volume_file,
}
