"""The table of clips that every preprocessing front end builds and the pipeline reads, kept on disk.

Held as Python objects, a corpus's table cost about 1.2 KB a clip through preprocessing (0.33 GiB at 288,000
clips), so preprocessing's memory grew with the corpus. Here a clip is a row of a private, temporary SQLite database
(Python's sqlite3 with an empty file name: SQLite keeps it in a page cache of CACHE_KIB and spills the rest to a
file of its own, which it removes when the table is closed or its process ends, killed or not), and the pipeline
asks it questions (duplicates, classes, foldable items, identical audio) in SQL.

Names, labels and foldable items are kept as UTF-8 BLOBs (surrogates passed through: undecodable file names
survive), so that SQLite's ORDER BY and GROUP BY see them as Python's sorted() does: UTF-8 byte order is code point
order. A clip's record (its row's columns) is kept as JSON text.
"""
import contextlib
import dataclasses
import json
import os
import sqlite3
from pathlib import Path

from utility_functions import XvalError

CACHE_KIB = 4 * 1024  # SQLite page cache of a table (KiB), which also bounds its sorts in memory
PAGE_CLIPS = 1024  # clips read per query where the pipeline updates rows as it goes
INSERTED_PER_CALL = 4096  # rows buffered before one executemany


def as_blob(text):
    """A str as the BLOB the tables store (UTF-8, lone surrogates kept): sorts as sorted() sorts the strs."""
    return text.encode("utf-8", "surrogatepass")


def as_text(blob):
    """The str of as_blob's bytes (None stays None)."""
    return None if blob is None else bytes(blob).decode("utf-8", "surrogatepass")


@dataclasses.dataclass(slots=True)
class Clip:
    """One clip as a front end finds it, to add to a ClipTable: its row number (None where there are no rows), file
    as shown, absolute path, raw label, foldable item, and the record the metadata keeps for it (every column of
    its row)."""
    row: int | None
    file: str
    path: str
    label: str
    item: str
    record: dict


@contextlib.contextmanager
def table_errors():
    """SQLite's errors (a full or unwritable temporary folder) as the one line that says where and what to do."""
    try:
        yield
    except sqlite3.OperationalError as error:
        raise XvalError(f"the table of clips cannot be kept in its temporary file ({error}; SQLite puts it in "
                        "$SQLITE_TMPDIR, else $TMPDIR, else /var/tmp, else /tmp): point SQLITE_TMPDIR at a folder "
                        "with room (about 0.5 KB a clip)") from None


def private_database():
    """A connection to a private, temporary on-disk SQLite database (deleted by SQLite when closed), its page cache
    CACHE_KIB, its temporary sorts in files, not memory."""
    database = sqlite3.connect("")
    database.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    database.execute("PRAGMA temp_store = FILE")
    return database


class ClipTable:
    """The clips of a front end, in table order (seq, from 0), each with a status: None while the pipeline keeps it,
    else the kind of skip (preprocessing_dataset.SKIP_KINDS) and its reason.

    Columns: seq, row, file, path, real (the path with links resolved: one audio file, however named), label, item,
    record (JSON) (see Clip); then what the pipeline finds: status, reason, target (class index or number), pieces
    (1, or its windows), native_rate (Hz) and duration (s) of the audio, digest (the SHA-256 of its bytes) and
    first_piece (its first row in the raw features). SQL may call quoted(blob): the repr() of its text, as
    messages show names."""

    def __init__(self):
        self.database = private_database()
        self.database.execute(
            "CREATE TABLE clips (seq INTEGER PRIMARY KEY, row INTEGER, file BLOB, path BLOB, real BLOB, label BLOB, "
            "item BLOB, record TEXT, status TEXT, reason TEXT, target REAL, pieces INTEGER DEFAULT 0, "
            "native_rate INTEGER, duration REAL, digest BLOB, first_piece INTEGER DEFAULT 0)")
        self.database.create_function("quoted", 1, lambda blob: repr(as_text(blob)), deterministic=True)
        self.pending = []
        self.added = 0

    def add(self, clip):
        """Append a Clip (front ends: in table order)."""
        self.pending.append((self.added, clip.row, as_blob(clip.file), as_blob(clip.path),
                             as_blob(os.path.realpath(clip.path)), as_blob(clip.label), as_blob(clip.item),
                             json.dumps(clip.record, default=str)))
        self.added += 1
        if len(self.pending) >= INSERTED_PER_CALL:
            self.flush()

    def flush(self):
        """Insert the clips added since the last flush."""
        if self.pending:
            with table_errors():
                self.database.executemany("INSERT INTO clips (seq, row, file, path, real, label, item, record) "
                                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.pending)
            self.pending = []

    def query(self, sql, parameters=()):
        """A cursor over sql's rows (the clips added so far are in the table)."""
        self.flush()
        with table_errors():
            return self.database.execute(sql, parameters)

    def update(self, sql, rows):
        """executemany(sql, rows): rows, an iterable of parameter tuples."""
        self.flush()
        with table_errors():
            self.database.executemany(sql, rows)

    def value(self, sql, parameters=()):
        """The first column of sql's first row."""
        return self.query(sql, parameters).fetchone()[0]

    def kept(self):
        """How many clips the pipeline keeps so far."""
        return self.value("SELECT COUNT(*) FROM clips WHERE status IS NULL")

    def entries(self):
        """[file, label, foldable item] of every clip added, in table order: what the input fingerprint hashes."""
        for file, label, item in self.query("SELECT file, label, item FROM clips ORDER BY seq"):
            yield [as_text(file), as_text(label), as_text(item)]

    def pages(self, columns):
        """Tuples (seq, *columns) of the kept clips in table order, PAGE_CLIPS at a time: each page is read whole
        before it is yielded, so the caller may update the table between pages."""
        last = -1
        while True:
            page = self.query(f"SELECT seq, {columns} FROM clips WHERE status IS NULL AND seq > ? ORDER BY seq "
                              f"LIMIT {PAGE_CLIPS}", (last,)).fetchall()
            if not page:
                return
            yield page
            last = page[-1][0]


class FileStats:
    """[path relative to root, size in bytes, mtime in ns] of the input files that exist, each once, in the order of
    their Path objects: what the input fingerprint sees. Sorted by SQLite as the path's string with NUL for each
    separator (NUL sorts below every character of a name: the order of the paths' parts), on disk as ClipTable
    is. Iterable any number of times."""

    def __init__(self, root):
        self.root = root
        self.database = private_database()
        self.database.execute("CREATE TABLE files (key BLOB PRIMARY KEY, name BLOB, size INTEGER, mtime INTEGER) "
                              "WITHOUT ROWID")
        self.pending = {}

    def add(self, path):
        """Add a file (a missing one, or a folder, is left out)."""
        key = str(Path(path))
        if key not in self.pending and os.path.isfile(key):
            status = os.stat(key)
            self.pending[key] = (as_blob(key.replace(os.sep, "\0")), as_blob(os.path.relpath(key, self.root)),
                                 status.st_size, status.st_mtime_ns)
            if len(self.pending) >= INSERTED_PER_CALL:
                self.flush()
        return self

    def flush(self):
        """Insert the files added since the last flush."""
        if self.pending:
            with table_errors():
                self.database.executemany("INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?)", self.pending.values())
            self.pending = {}

    def __iter__(self):
        self.flush()
        with table_errors():
            rows = self.database.execute("SELECT name, size, mtime FROM files ORDER BY key")
        for name, size, mtime in rows:
            yield [as_text(name), size, mtime]
