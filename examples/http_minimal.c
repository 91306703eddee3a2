/* The smallest useful resil-http program: one dependency, one GET with a
 * deadline, the outcome printed. Usage: http_minimal [BASE_URL] */
#include <stdio.h>

#include <resil/http.h>

int main(int argc, char **argv) {
  resil_http_config cfg;
  resil_http_config_init(&cfg, "example-api");
  cfg.base_url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
  cfg.pool.max_size = 4;          /* never more than 4 connections open */
  cfg.dep.retry.max_attempts = 2; /* one retry for idempotent requests */

  resil_err err;
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) {
    fprintf(stderr, "config: %s\n", err.msg);
    return 2;
  }
  resil_http_response resp;
  resil_status st = resil_http_get(h, resil_deadline_in_ms(500), "/fast", &resp, &err);
  if (st == RESIL_OK)
    printf("%ld: %.*s\n", resp.status, (int)resp.body_len, resp.body ? resp.body : "");
  else
    fprintf(stderr, "%s: %s\n", resil_status_name(st), err.msg);
  resil_http_response_free(&resp); /* always, whatever st is */
  resil_http_free(h);
  return st == RESIL_OK ? 0 : 1;
}
