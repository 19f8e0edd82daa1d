"""A small Flask app that keeps records through SQLAlchemy.

It stores them in PostgreSQL when DATABASE_URL is set (Sprout builds it
from the RDS_* properties), else in SQLite under DATA_DIR, which Sprout
keeps in a persistent volume.
"""
import os
import time

from flask import Flask, abort, jsonify, request
from sqlalchemy import Column, DateTime, Integer, String, create_engine, func, select, text
from sqlalchemy.orm import Session, declarative_base


def database_url():
    url = os.environ.get("DATABASE_URL", "")
    if url:
        # SQLAlchemy wants postgresql://; Heroku, Elastic Beanstalk and
        # Sprout write postgres://.
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        return url
    data = os.environ.get("DATA_DIR", "/data")
    os.makedirs(data, exist_ok=True)
    return "sqlite:///" + os.path.join(data, "records.db")


engine = create_engine(database_url(), future=True, pool_pre_ping=True)
Base = declarative_base()


class Record(Base):
    __tablename__ = "records"
    id = Column(Integer, primary_key=True)
    body = Column(String(200), nullable=False)
    version = Column(String(64))
    created = Column(DateTime, server_default=func.now())


def init_db():
    Base.metadata.create_all(engine)


app = Flask(__name__)
VERSION = os.environ.get("SPROUT_VERSION", "dev")


@app.route("/", methods=["GET", "POST"])
def index():
    # Plain text, version first, so that a load generator can tell which
    # version answered.
    return f"{VERSION} {engine.dialect.name} {os.environ.get('GREETING', '')}\n"


@app.get("/health")
def health():
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return jsonify(ok=True, version=VERSION)


@app.post("/records")
def add_record():
    body = request.get_data(as_text=True).strip()
    if not body or len(body) > 200:
        abort(400, "send 1 to 200 characters")
    with Session(engine) as s:
        r = Record(body=body, version=VERSION)
        s.add(r)
        s.commit()
        return jsonify(id=r.id, body=r.body, version=r.version), 201


@app.get("/records")
def list_records():
    with Session(engine) as s:
        rows = s.execute(select(Record).order_by(Record.id)).scalars().all()
        return jsonify([{"id": r.id, "body": r.body, "version": r.version} for r in rows])


@app.get("/slow")
def slow():
    seconds = min(float(request.args.get("s", "2")), 30)
    time.sleep(seconds)
    return jsonify(slept=seconds, version=VERSION)
