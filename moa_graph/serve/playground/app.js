// The moa_graph playground: asks the mixture a question and shows every proposal as it is
// written, each layer a row of cards, then the aggregator's answer and the run's totals.
// It reads the server's run-event stream (POST v1/moa/runs, server-sent events). Model text is
// only ever set as text (textContent, Text nodes): nothing a model writes is parsed as HTML.
"use strict";

(() => {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const form = $("ask-form");
  const question = $("question");
  const keyInput = $("api-key");
  const alertBox = $("alert");
  const layersBox = $("layers");
  const answerText = $("answer-text");
  const answerStatus = $("answer-status");
  const tally = $("tally");
  const KEY_STORE = "moa_graph.playground.apiKey"; // sessionStorage only: gone with the tab

  const settings = {
    authRequired: body.dataset.authRequired === "true",
    model: body.dataset.model || "",
    choices: parseJSON(body.dataset.choices) || {},
  };

  function parseJSON(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  // -- page set-up --------------------------------------------------------------------------

  $("model-name").textContent = settings.model;
  if (settings.authRequired) {
    $("key-field").hidden = false;
    keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
  }
  if (settings.choices.staircase) $("staircase-field").hidden = false;
  if (Array.isArray(settings.choices.aggregation) && settings.choices.aggregation.length) {
    const select = $("aggregation");
    for (const name of settings.choices.aggregation) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.append(option);
    }
    $("aggregation-field").hidden = false;
  }

  // -- drawing, one frame at a time ---------------------------------------------------------
  // Text arrives token by token; appending it at once would lay the page out for every token.
  // Deltas wait in `pending` and are drawn together once per animation frame.

  const pending = new Map(); // Text node -> text waiting to be appended
  let frameAsked = false;

  function appendText(node, text) {
    pending.set(node, (pending.get(node) || "") + text);
    if (!frameAsked) {
      frameAsked = true;
      requestAnimationFrame(flush);
    }
  }

  function flush() {
    frameAsked = false;
    for (const [node, text] of pending) node.appendData(text);
    pending.clear();
  }

  function textNode(parent) {
    const node = document.createTextNode("");
    parent.append(node);
    return node;
  }

  // -- one run -------------------------------------------------------------------------------

  const cards = new Map(); // "layer:index" -> card
  let run = null;

  function showAlert(message) {
    alertBox.textContent = message;
    alertBox.hidden = false;
  }

  function reset() {
    flush();
    cards.clear();
    layersBox.replaceChildren();
    answerText.replaceChildren();
    answerStatus.textContent = "";
    tally.replaceChildren();
    tally.hidden = true;
    alertBox.hidden = true;
    alertBox.textContent = "";
    for (const id of ["run-calls", "run-tokens", "run-first-token", "run-wall"]) {
      $(id).textContent = "-";
    }
  }

  function layerRow(layer) {
    let row = layersBox.querySelector(`[data-layer="${layer}"]`);
    if (!row) {
      row = document.createElement("div");
      row.className = "layer";
      row.dataset.layer = String(layer);
      const title = document.createElement("h2");
      title.textContent = `Layer ${layer}`;
      const cardsRow = document.createElement("div");
      cardsRow.className = "cards";
      row.append(title, cardsRow);
      const later = [...layersBox.children].find((r) => Number(r.dataset.layer) > layer);
      layersBox.insertBefore(row, later || null);
    }
    return row.querySelector(".cards");
  }

  function card(event) {
    const key = `${event.layer}:${event.index}`;
    let found = cards.get(key);
    if (found) return found;
    const section = document.createElement("section");
    section.className = "card";
    const name = event.proposer || `proposer ${event.index + 1}`;
    section.setAttribute("aria-label", `Layer ${event.layer} proposer ${event.index + 1}: ${name}`);
    const head = document.createElement("h3");
    head.textContent = name;
    const model = document.createElement("span");
    model.className = "card-model";
    model.textContent = event.model && event.model !== name ? event.model : "";
    const status = document.createElement("span");
    status.className = "status";
    const metrics = document.createElement("p");
    metrics.className = "metrics";
    const text = document.createElement("div");
    text.className = "text";
    section.append(head, model, status, metrics, text);
    // cards keep their configured order whatever order they start in
    const row = layerRow(event.layer);
    const later = [...row.children].find((c) => Number(c.dataset.index) > event.index);
    section.dataset.index = String(event.index);
    row.insertBefore(section, later || null);
    found = { section, status, metrics, text: textNode(text), round: 0 };
    cards.set(key, found);
    return found;
  }

  function setStatus(target, status) {
    target.status.textContent = status;
    target.section.dataset.status = status;
  }

  function describe(proposal) {
    const parts = [];
    if (proposal.latency_s != null) parts.push(`${proposal.latency_s.toFixed(1)} s`);
    const usage = proposal.usage || {};
    if (usage.output_tokens != null) {
      parts.push(`${usage.output_tokens} token${usage.output_tokens === 1 ? "" : "s"}`);
    }
    if (proposal.attempts > 1 && !proposal.rounds) {
      // a staircase counts its rounds as attempts: retries show only outside one
      const retries = proposal.attempts - 1;
      parts.push(`${retries} ${retries === 1 ? "retry" : "retries"}`);
    }
    if (proposal.confidence != null) parts.push(`confidence ${proposal.confidence.toFixed(2)}`);
    if (proposal.rounds) parts.push(`${proposal.rounds} rounds`);
    return parts.join(" · ");
  }

  const handlers = {
    run(event) {
      run.aggregatorLayer = event.aggregator ? event.aggregator.layer : null;
      for (const layer of event.layers || []) {
        for (const proposer of layer.proposers) card({ layer: layer.layer, ...proposer });
      }
    },
    proposal_started(event) {
      setStatus(card(event), "writing");
    },
    proposal_delta(event) {
      appendText(card(event).text, event.text);
    },
    proposal_retrying(event) {
      setStatus(card(event), `retrying (attempt ${event.attempt})`);
    },
    proposal_finished(event) {
      const target = card(event);
      flush();
      if (typeof event.text === "string" && target.text.data !== event.text) {
        target.text.data = event.text; // the whole text: it did not stream, or a delta was lost
      }
      setStatus(target, "done");
      target.metrics.textContent = describe(event);
    },
    proposal_failed(event) {
      const target = card(event);
      flush();
      setStatus(target, event.error && event.error.startsWith("cancelled") ? "cut off" : "failed");
      target.metrics.textContent = [describe(event), event.error].filter(Boolean).join(" · ");
    },
    round_started(event) {
      // staircase streaming: everyone writes in rounds of growing chunks
      if (event.layer === run.aggregatorLayer) {
        answerStatus.textContent = `writing, round ${event.round}`;
      } else if (event.index != null) {
        setStatus(card(event), `writing, round ${event.round}`);
      }
    },
    round_finished() {},
    layer_done() {},
    answer_delta(event) {
      if (run.firstToken == null) {
        run.firstToken = (performance.now() - run.started) / 1000;
        $("run-first-token").textContent = `${run.firstToken.toFixed(2)} s`;
        if (!answerStatus.textContent) answerStatus.textContent = "writing";
      }
      appendText(run.answer, event.text);
    },
    usage(event) {
      $("run-tokens").textContent = String(event.total_tokens);
    },
    done(event) {
      flush();
      if (typeof event.answer === "string" && run.answer.data !== event.answer) {
        run.answer.data = event.answer;
      }
      answerStatus.textContent = "done";
      $("run-calls").textContent = String(event.calls);
      if (event.usage) $("run-tokens").textContent = String(event.usage.total_tokens);
      if (event.first_token_s != null) {
        $("run-first-token").textContent = `${event.first_token_s.toFixed(2)} s`;
      }
      $("run-wall").textContent = `${event.wall_s.toFixed(2)} s`;
      if (event.votes) showTally(event.votes);
    },
    error(event) {
      answerStatus.textContent = "failed";
      showAlert(event.message || "The run failed.");
    },
  };

  function showTally(votes) {
    const counts = {}; // the record lists each proposal's answer (null: none could be read)
    for (const answer of votes.answers || []) {
      const key = answer == null ? "no clear answer" : answer;
      counts[key] = (counts[key] || 0) + 1;
    }
    const list = document.createElement("ul");
    for (const [answer, count] of Object.entries(counts)) {
      const item = document.createElement("li");
      item.textContent = `${answer}: ${count} vote${count === 1 ? "" : "s"}`;
      list.append(item);
    }
    const head = document.createElement("h3");
    head.textContent = votes.winner != null ? `Vote: ${votes.winner}` : "Vote";
    tally.replaceChildren(head, list);
    tally.hidden = false;
  }

  // -- the request and its event stream ------------------------------------------------------

  const REFUSALS = {
    401: "The API key was refused: check the key and ask again.",
    413: "The question is too long for this server.",
    429: "The server is busy: wait a moment and ask again.",
  };

  async function refusal(response) {
    const body = await response.json().catch(() => null);
    const detail = body && body.error && body.error.message;
    return REFUSALS[response.status] || detail || `The server answered ${response.status}.`;
  }

  function choices() {
    const chosen = {};
    const staircase = $("staircase").value;
    if (!$("staircase-field").hidden && staircase) {
      chosen.staircase = staircase === "none" ? null : Number(staircase);
    }
    const aggregation = $("aggregation").value;
    if (!$("aggregation-field").hidden && aggregation) chosen.aggregation = aggregation;
    return chosen;
  }

  async function ask(text) {
    if (run && run.controller) run.controller.abort(); // leaving a run cancels it
    reset();
    const controller = new AbortController();
    run = { controller, started: performance.now(), firstToken: null, answer: textNode(answerText) };
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (settings.authRequired) {
      sessionStorage.setItem(KEY_STORE, keyInput.value);
      headers.Authorization = `Bearer ${keyInput.value}`;
    }
    const request = {
      model: settings.model, messages: [{ role: "user", content: text }], choices: choices(),
    };
    let response;
    try {
      response = await fetch("v1/moa/runs", {
        method: "POST", headers, body: JSON.stringify(request), signal: controller.signal,
      });
    } catch (error) {
      if (error.name !== "AbortError") showAlert(`The server could not be reached: ${error.message}`);
      return;
    }
    if (!response.ok) {
      showAlert(await refusal(response));
      return;
    }
    await readEvents(response.body, controller.signal);
  }

  async function readEvents(stream, signal) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (!signal.aborted) showAlert(`The event stream broke off: ${error.message}`);
    }
  }

  function dispatch(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    const handler = handlers[name];
    const event = parseJSON(data.join("\n"));
    if (handler && event) handler(event);
  }

  form.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const text = question.value.trim();
    if (!text) {
      showAlert("Write a question first.");
      return;
    }
    ask(text);
  });
})();
